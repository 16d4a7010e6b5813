"""Remote policies against real servers on loopback: OpenVLA REST (``wmgym serve``) and openpi websocket."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import requests

from policies.base import check_observation
from policies.remote import (
    PolicyServerError,
    RestPolicyClient,
    WebsocketPolicyClient,
    decode_json,
    encode_json,
    pack_msgpack,
    unpack_msgpack,
)
from policies.serve import PolicyServer, parse_options
from policies.wrappers import ChunkExecutor

INSTRUCTION = "lift the red cube"


def observation(value: int = 100, instruction: str = INSTRUCTION, **extra) -> dict:
    image = np.full((64, 64, 3), value, np.uint8)
    image[0, 0] = (1, 2, 3)  # not a constant image: arrays must keep their layout on the wire
    return {"image": image, "instruction": instruction, **extra}


def expected_action(image: np.ndarray, instruction: str) -> np.ndarray:
    """What :class:`Echo` answers: a function of the image and the instruction."""
    action = np.linspace(-1, 1, 7, dtype=np.float32) * np.float32(image.mean() / 255)
    action[-1] = len(instruction) / 100
    return action


class Echo:
    """Deterministic policy that remembers what it was given."""

    name = "echo"

    def __init__(self, chunk: int | None = None, fail: bool = False) -> None:
        self.chunk, self.fail = chunk, fail
        self.resets: list[str] = []
        self.seen: list[dict] = []

    def reset(self, instruction: str) -> None:
        self.resets.append(instruction)

    def act(self, obs: dict) -> np.ndarray:
        image, instruction = check_observation(obs)
        self.seen.append({k: v for k, v in obs.items() if k != "image"} | {"shape": image.shape})
        if self.fail:
            raise RuntimeError("the policy broke down")
        action = expected_action(image, instruction)
        if self.chunk is None:
            return action
        return np.stack([action * (i + 1) / self.chunk for i in range(self.chunk)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- codecs


def test_json_numpy_wire_format_round_trips():
    payload = {"image": observation()["image"], "instruction": INSTRUCTION}
    text = encode_json(payload)
    raw = json.loads(text)  # plain JSON: arrays are json-numpy objects
    assert set(raw["image"]) == {"__numpy__", "dtype", "shape"} and raw["image"]["shape"] == [
        64,
        64,
        3,
    ]
    decoded = decode_json(text)
    np.testing.assert_array_equal(decoded["image"], payload["image"])
    assert decoded["image"].dtype == np.uint8 and decoded["instruction"] == INSTRUCTION


def test_msgpack_wire_format_is_openpis():
    actions = np.arange(14, dtype=np.float32).reshape(2, 7)
    data = pack_msgpack({"actions": actions, "t": np.float64(1.5), "prompt": "hi"})
    raw = msgpack.unpackb(data)  # without our hook: the array is openpi's map
    assert raw["actions"][b"__ndarray__"] is True
    assert raw["actions"][b"dtype"] == "<f4" and list(raw["actions"][b"shape"]) == [2, 7]
    assert raw["actions"][b"data"] == actions.tobytes()
    decoded = unpack_msgpack(data)
    np.testing.assert_array_equal(decoded["actions"], actions)
    assert decoded["t"] == 1.5 and decoded["prompt"] == "hi"
    # maps packed with str keys (other packers) decode too
    str_keys = msgpack.packb(
        {"a": {"__ndarray__": True, "data": actions.tobytes(), "dtype": "<f4", "shape": [2, 7]}}
    )
    np.testing.assert_array_equal(unpack_msgpack(str_keys)["a"], actions)


# --------------------------------------------------------------------------- REST server + client


@pytest.fixture(scope="module")
def rest_server():
    policy = Echo()
    with PolicyServer(policy, port=0) as server:
        yield server, policy


def test_rest_client_gets_the_served_policys_action(rest_server):
    server, policy = rest_server
    client = RestPolicyClient(server.url)
    obs = observation()
    action = client.act(obs)
    assert action.shape == (7,) and action.dtype == np.float32
    np.testing.assert_array_equal(action, expected_action(obs["image"], INSTRUCTION))
    assert policy.seen[-1]["shape"] == (64, 64, 3)
    assert requests.get(f"{server.url}/healthz", timeout=5).json()["policy"] == "echo"


def test_rest_passes_the_proprio_state_on_and_checks_it(rest_server):
    server, policy = rest_server
    state = np.arange(8, dtype=np.float32) / 10
    RestPolicyClient(server.url).act(observation(state=state))
    np.testing.assert_array_equal(policy.seen[-1]["state"], state)
    RestPolicyClient(server.url).act(observation())
    assert "state" not in policy.seen[-1]  # none sent: none made up
    for bad in ([[1.0, 2.0]], ["a"], [float("nan")], []):
        body = encode_json({"image": observation()["image"], "instruction": "x", "state": bad})
        response = requests.post(f"{server.url}/act", data=body, timeout=5)
        assert response.status_code == 422 and "'state'" in response.json()["error"], bad


def test_rest_server_resets_on_new_episodes_and_instructions(rest_server):
    server, policy = rest_server
    client = RestPolicyClient(server.url, unnorm_key="bridge_orig")
    client.reset("push the blue cube to the left")
    before = len(policy.resets)
    for _ in range(3):
        client.act(observation(instruction="push the blue cube to the left"))
    assert len(policy.resets) == before + 1  # only the first request of the episode
    client.reset("push the blue cube to the left")
    client.act(observation(instruction="push the blue cube to the left"))
    assert len(policy.resets) == before + 2  # the client said "reset": a new episode
    client.act(observation(instruction="lift the green cube"))
    assert policy.resets[-1] == "lift the green cube"  # new instruction: reset too
    assert policy.seen[-1]["unnorm_key"] == "bridge_orig"


def test_rest_client_returns_chunks_of_chunk_policies():
    with PolicyServer(Echo(chunk=3), port=0) as server:
        chunk = RestPolicyClient(server.url).act(observation())
    base = expected_action(observation()["image"], INSTRUCTION)
    assert chunk.shape == (3, 7)
    np.testing.assert_allclose(chunk[-1], base, rtol=1e-6)


MALFORMED = {
    "not json": (b"{'image': oops", 400, "not json-numpy"),
    "json list": (b"[1, 2, 3]", 400, "JSON object"),
    "no image": (encode_json({"instruction": INSTRUCTION}).encode(), 422, "no 'image'"),
    "float image": (
        encode_json(
            {"image": np.zeros((8, 8, 3), np.float32), "instruction": INSTRUCTION}
        ).encode(),
        422,
        "uint8",
    ),
    "wrong shape": (
        encode_json({"image": np.zeros((8, 8), np.uint8), "instruction": INSTRUCTION}).encode(),
        422,
        r"\(H, W, 3\)",
    ),
    "list image": (
        json.dumps({"image": [[[0, 0, 0]]], "instruction": INSTRUCTION}).encode(),
        422,
        "not a JSON list",
    ),
    "empty instruction": (
        encode_json({"image": np.zeros((8, 8, 3), np.uint8), "instruction": ""}).encode(),
        422,
        "instruction",
    ),
    "no instruction": (
        encode_json({"image": np.zeros((8, 8, 3), np.uint8)}).encode(),
        422,
        "instruction",
    ),
    "0-d image": (
        json.dumps(
            {"image": {"__numpy__": "AA==", "dtype": "|u1", "shape": []}, "instruction": "x"}
        ).encode(),
        422,
        "uint8",
    ),
    "100k-deep nesting": (
        b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b', "instruction": "x"}',
        400,
        "nested too deeply",
    ),
    "object dtype": (
        json.dumps(
            {"image": {"__numpy__": "AA==", "dtype": "|O", "shape": [1]}, "instruction": "x"}
        ).encode(),
        400,
        "refusing an array of dtype object",
    ),
    "structured dtype": (
        json.dumps(
            {
                "image": {"__numpy__": "AA==", "dtype": [["a", "|u1"]], "shape": [1]},
                "instruction": "x",
            }
        ).encode(),
        400,
        "dtype must be a string",
    ),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_rest_server_answers_malformed_requests_with_4xx(rest_server, case):
    server, _ = rest_server
    body, status, message = MALFORMED[case]
    response = requests.post(f"{server.url}/act", data=body, timeout=5)
    assert response.status_code == status
    import re

    assert re.search(message, response.json()["error"]), response.text


def test_rest_server_refuses_bodies_over_its_limit_and_answers_after(rest_server):
    from policies.remote import MAX_MESSAGE_BYTES

    server, _ = rest_server
    huge = b" " * (MAX_MESSAGE_BYTES + 1)
    response = requests.post(f"{server.url}/act", data=huge, timeout=30)
    assert response.status_code == 413 and "exceeds" in response.json()["error"]

    def chunks():  # no Content-Length: the server counts what arrives
        for _ in range(MAX_MESSAGE_BYTES // 2**20 + 2):
            yield b" " * 2**20

    response = requests.post(f"{server.url}/act", data=chunks(), timeout=30)
    assert response.status_code == 413
    body = encode_json({"image": observation()["image"], "instruction": INSTRUCTION})
    assert requests.post(f"{server.url}/act", data=body, timeout=5).status_code == 200


def test_rest_server_accepts_openvlas_encoded_wrapping(rest_server):
    server, _ = rest_server
    obs = observation(value=7)
    inner = encode_json({"image": obs["image"], "instruction": INSTRUCTION})
    response = requests.post(f"{server.url}/act", json={"encoded": inner}, timeout=5)
    assert response.status_code == 200
    np.testing.assert_array_equal(
        decode_json(response.text), expected_action(obs["image"], INSTRUCTION)
    )


def test_rest_client_checks_observations_before_sending(rest_server):
    server, policy = rest_server
    count = len(policy.seen)
    with pytest.raises(ValueError, match="uint8"):
        RestPolicyClient(server.url).act({"image": np.zeros((8, 8, 3)), "instruction": INSTRUCTION})
    assert len(policy.seen) == count


def test_rest_client_reports_a_failing_policy():
    with PolicyServer(Echo(fail=True), port=0) as server:
        with pytest.raises(PolicyServerError, match=r"HTTP 500.*broke down") as info:
            RestPolicyClient(server.url, retries=0).act(observation())
    assert server.url in str(info.value)


def test_rest_client_reports_a_server_that_is_down():
    url = f"http://127.0.0.1:{free_port()}"
    client = RestPolicyClient(url, retries=2, backoff=0.01, timeout=2)
    with pytest.raises(PolicyServerError, match="ConnectionError.*after 3 attempts") as info:
        client.act(observation())
    assert url in str(info.value)


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers ``POST /act`` with the next (status, body, delay) of the server's script."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests += 1
        status, body, delay = self.server.script.pop(0) if self.server.script else (500, b"", 0)
        time.sleep(delay)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.script, server.requests = [], 0
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_rest_client_retries_unavailable_servers(scripted_server):
    server, url = scripted_server
    action = np.linspace(-0.5, 0.5, 7, dtype=np.float32)
    server.script = [(503, b"busy", 0), (503, b"busy", 0), (200, encode_json(action).encode(), 0)]
    np.testing.assert_array_equal(
        RestPolicyClient(url, retries=2, backoff=0.01).act(observation()), action
    )
    assert server.requests == 3
    server.script, server.requests = [(503, b"busy", 0)] * 2, 0
    with pytest.raises(PolicyServerError, match="HTTP 503: busy"):
        RestPolicyClient(url, retries=1, backoff=0.01).act(observation())
    assert server.requests == 2


GARBAGE = {
    "not json": (b"<html>oops</html>", "not JSON"),
    "openvla error string": (b'"error"', "'error' instead of an action"),
    "wrong length": (
        encode_json(np.zeros(3, np.float32)).encode(),
        r"invalid action of shape \(3,\)",
    ),
    "nan": (encode_json(np.full(7, np.nan, np.float32)).encode(), "NaN"),
    "a map": (b'{"result": 1}', "instead of an action"),
}


@pytest.mark.parametrize("case", GARBAGE, ids=list(GARBAGE))
def test_rest_client_never_turns_garbage_into_an_action(scripted_server, case):
    server, url = scripted_server
    body, message = GARBAGE[case]
    server.script = [(200, body, 0)]
    with pytest.raises(PolicyServerError, match=message) as info:
        RestPolicyClient(url, retries=0).act(observation())
    assert url in str(info.value)


def test_rest_client_times_out(scripted_server):
    server, url = scripted_server
    server.script = [(200, encode_json(np.zeros(7, np.float32)).encode(), 1.0)]
    start = time.perf_counter()
    with pytest.raises(PolicyServerError, match="Timeout"):
        RestPolicyClient(url, retries=0, timeout=0.2).act(observation())
    assert time.perf_counter() - start < 0.9


@pytest.mark.parametrize(
    "kwargs, message",
    [({"timeout": 0}, "timeout"), ({"retries": -1}, "retries"), ({"backoff": -1.0}, "backoff")],
)
def test_rest_client_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RestPolicyClient("http://127.0.0.1:8000", **kwargs)
    with pytest.raises(ValueError, match="http://"):
        RestPolicyClient("127.0.0.1:8000")


# --------------------------------------------------------------------------- websocket (openpi)


def test_websocket_client_against_our_openpi_server():
    policy = Echo(chunk=4)
    with PolicyServer(policy, port=0, protocol="websocket") as server:
        client = WebsocketPolicyClient(server.url)
        assert client.metadata["policy"] == "echo"
        obs = observation(value=30)
        chunk = client.act(obs)
        assert chunk.shape == (4, 7) and chunk.dtype == np.float32
        np.testing.assert_allclose(chunk[-1], expected_action(obs["image"], INSTRUCTION), rtol=1e-6)
        executor = ChunkExecutor(client, execute=2)
        executor.reset(INSTRUCTION)
        steps = [executor.act(obs) for _ in range(4)]
        np.testing.assert_allclose(steps[2], chunk[0], rtol=1e-6)  # a new chunk after 2 steps
        assert requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).status_code == 200
        client.close()
        np.testing.assert_allclose(client.act(obs), chunk)  # reconnects after close
        client.close()
    assert policy.seen[0]["shape"] == (64, 64, 3)


def test_our_state_reaches_libero_servers_in_their_layout():
    from policies.remote import FILL, KEY_MAPS, libero_state, quaternion_to_axis_angle

    np.testing.assert_allclose(quaternion_to_axis_angle(np.array([0, 0, 0, 1.0])), 0)
    quarter_turn = np.array([0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])  # 90 degrees about z
    np.testing.assert_allclose(quaternion_to_axis_angle(quarter_turn), [0, 0, np.pi / 2], atol=1e-9)
    state = np.array([0.1, -0.2, 0.9, *quarter_turn, 0.06], np.float32)
    np.testing.assert_allclose(
        libero_state(state), [0.1, -0.2, 0.9, 0, 0, np.pi / 2, 0.03, -0.03], atol=1e-6
    )
    with pytest.raises(ValueError, match="8-D"):
        libero_state(np.zeros(3))
    client = WebsocketPolicyClient.__new__(WebsocketPolicyClient)  # no connection: mapping only
    client.key_map, client.fill = dict(KEY_MAPS["libero"]), dict(FILL)
    sent = client.request({**observation(), "state": state})["observation/state"]
    np.testing.assert_allclose(sent, libero_state(state))
    np.testing.assert_array_equal(client.request(observation())["observation/state"], np.zeros(8))


def test_websocket_client_maps_keys_for_droid_servers():
    from policies.remote import droid_gripper

    with PolicyServer(Echo(), port=0, protocol="websocket") as server:
        with WebsocketPolicyClient(server.url, key_map="droid", retries=0, timeout=5) as client:
            state = np.array([0.1, -0.2, 0.9, 0, 0, 0, 1, 0.02], np.float32)  # a quarter closed
            request = client.request({**observation(), "state": state})
    assert sorted(request) == [
        "observation/exterior_image_1_left", "observation/gripper_position",
        "observation/joint_position", "observation/wrist_image_left", "prompt",
    ]  # fmt: skip
    np.testing.assert_allclose(request["observation/gripper_position"], [0.75])
    np.testing.assert_array_equal(request["observation/joint_position"], np.zeros(7))
    assert not request["observation/wrist_image_left"].any()  # no wrist camera: black
    np.testing.assert_allclose(droid_gripper(np.r_[np.zeros(7), 0.2]), [0.0])  # clipped
    with pytest.raises(ValueError, match="8-D"):
        droid_gripper(np.zeros(2))


def test_websocket_client_maps_keys_for_libero_servers():
    client = WebsocketPolicyClient.__new__(WebsocketPolicyClient)  # no connection: mapping only
    client.key_map = {
        "image": "observation/image",
        "image_wrist": "observation/wrist_image",
        "instruction": "prompt",
    }
    from policies.remote import FILL

    client.fill = dict(FILL)
    request = client.request(observation(value=5))
    assert sorted(request) == [
        "observation/image",
        "observation/state",
        "observation/wrist_image",
        "prompt",
    ]
    assert request["prompt"] == INSTRUCTION and request["observation/state"].shape == (8,)
    assert (
        request["observation/wrist_image"].shape == (64, 64, 3)
        and request["observation/wrist_image"].max() == 0
    )
    wrist = np.full((64, 64, 3), 9, np.uint8)
    np.testing.assert_array_equal(
        client.request(observation(image_wrist=wrist))["observation/wrist_image"], wrist
    )


@pytest.mark.parametrize("debug", [False, True])
def test_openpi_server_sends_the_error_then_closes_with_1011(debug):
    from websockets.exceptions import ConnectionClosedError
    from websockets.sync.client import connect

    with PolicyServer(Echo(fail=True), port=0, protocol="websocket", debug=debug) as server:
        with connect(server.url, compression=None) as raw:
            unpack_msgpack(raw.recv(timeout=5))  # metadata
            raw.send(
                pack_msgpack({"observation/image": observation()["image"], "prompt": INSTRUCTION})
            )
            text = raw.recv(timeout=5)
            assert isinstance(text, str) and "the policy broke down" in text
            # the traceback names the server's files: sent only when debugging
            assert ("Traceback" in text and ".py" in text) == debug
            with pytest.raises(ConnectionClosedError):
                raw.recv(timeout=5)
            assert raw.close_code == 1011
        client = WebsocketPolicyClient(server.url, retries=0)
        with pytest.raises(PolicyServerError, match="broke down") as info:
            client.act(observation())
        assert server.url in str(info.value)


def scripted_ws_server(answers: list, metadata=None):
    """A minimal openpi-like server that sends ``metadata`` then the scripted answers."""
    from websockets.sync.server import serve

    def handler(connection):
        connection.send(pack_msgpack({"kind": "scripted"}) if metadata is None else metadata)
        for answer in answers:
            connection.recv()
            connection.send(answer)
        connection.recv()

    server = serve(handler, "127.0.0.1", 0, compression=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"ws://127.0.0.1:{server.socket.getsockname()[1]}"


def raw_array(dtype: str, data: bytes = b"\x00" * 56, shape=(1, 7)) -> bytes:
    """An openpi array map with any dtype string, as a malicious peer could send it."""
    import msgpack

    return msgpack.packb(
        {"actions": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": list(shape)}},
        use_bin_type=True,
    )


WS_GARBAGE = {
    "object dtype": (raw_array("|O"), "dtype object"),
    "complex dtype": (raw_array("<c8"), "dtype complex64"),
    "structured with objects": (raw_array("V8"), "dtype"),
    "short buffer": (raw_array("<f4", b"\x00" * 8), "needs 28 bytes"),
    "negative shape": (raw_array("<f4", b"", (-1, 7)), "shape must be"),
    "not msgpack": (b"\xc1\xc1\xc1", "not msgpack"),
    "no actions": (pack_msgpack({"result": 1}), "without 'actions'"),
    "eight dims": (pack_msgpack({"actions": np.zeros((4, 8), np.float32)}), r"shape \(4, 8\)"),
    "nan": (pack_msgpack({"actions": np.full((2, 7), np.nan, np.float32)}), "NaN"),
}


@pytest.mark.parametrize("case", WS_GARBAGE, ids=list(WS_GARBAGE))
def test_websocket_client_never_turns_garbage_into_an_action(case):
    answer, message = WS_GARBAGE[case]
    server, url = scripted_ws_server([answer])
    try:
        with WebsocketPolicyClient(url, retries=0, timeout=5) as client:
            assert client.metadata == {"kind": "scripted"}
            with pytest.raises(PolicyServerError, match=message):
                client.act(observation())
    finally:
        server.shutdown()


def test_websocket_client_checks_the_handshake():
    server, url = scripted_ws_server([], metadata="hello")
    try:
        with pytest.raises(PolicyServerError, match="instead of the metadata"):
            WebsocketPolicyClient(url, retries=0, timeout=5)
    finally:
        server.shutdown()


def test_websocket_client_reports_a_server_that_is_down():
    url = f"ws://127.0.0.1:{free_port()}"
    with pytest.raises(PolicyServerError, match="after 2 attempts") as info:
        WebsocketPolicyClient(url, retries=1, backoff=0.01, timeout=2)
    assert url in str(info.value)
    with pytest.raises(ValueError, match="ws://"):
        WebsocketPolicyClient("http://127.0.0.1:8000")


# --------------------------------------------------------------------------- wmgym serve


def test_parse_options_reads_json_values():
    assert parse_options(["seed=0", "device=cpu", "std=[0.1, 0.2]"]) == {
        "seed": 0,
        "device": "cpu",
        "std": [0.1, 0.2],
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["seed"])


def test_wmgym_serve_rejects_unknown_policies(capsys):
    from wmgym.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--policy", "ranodm"])
    assert info.value.code == 2
    assert "did you mean 'random'" in capsys.readouterr().err


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_wmgym_serve_serves_the_rest_client(stop_signal):
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "faulthandler",  # SIGABRT dumps every thread's stack (see the timeout below)
            "-m",
            "wmgym.cli",
            "serve",
            "--policy",
            "random",
            "--port",
            "0",
            "--option",
            "seed=0",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    client = None
    try:
        line = process.stdout.readline()
        assert "serving random on http://127.0.0.1:" in line, line + process.stderr.read()
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        client = RestPolicyClient(url)
        from policies.simple import RandomPolicy

        reference = RandomPolicy(seed=0)
        for _ in range(3):
            np.testing.assert_array_equal(client.act(observation()), reference.act(observation()))
    finally:
        if client is not None:
            client.close()  # no idle keep-alive connection for the server to wind down
        process.send_signal(stop_signal)  # Ctrl-C, or a process manager's SIGTERM
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            _, stderr = process.communicate()
            pytest.fail(
                f"the server did not stop within 60 s of {stop_signal!r}; its threads:\n{stderr}"
            )
    assert process.returncode == 0, stderr  # a graceful stop, not a kill


@pytest.mark.parametrize("dtype", ["|O", "<c16", "V16", "<M8[s]"])
def test_websocket_server_survives_frames_of_unsafe_dtypes_and_answers_after(dtype):
    """One frame of object (or void, complex, datetime) dtype must not take the server down:
    numpy would read pointers out of the client's bytes."""
    import msgpack
    from websockets.exceptions import ConnectionClosedError
    from websockets.sync.client import connect

    with PolicyServer(Echo(), port=0, protocol="websocket") as server:
        with connect(server.url, compression=None) as raw:
            unpack_msgpack(raw.recv(timeout=5))  # metadata
            image = {b"__ndarray__": True, b"data": b"\x01" * 16, b"dtype": dtype, b"shape": [2]}
            raw.send(msgpack.packb({"observation/image": image, "prompt": "x"}, use_bin_type=True))
            text = raw.recv(timeout=5)
            assert isinstance(text, str) and "refusing an array" in text
            with pytest.raises(ConnectionClosedError):
                raw.recv(timeout=5)
        with WebsocketPolicyClient(server.url, retries=0, timeout=5) as client:
            assert client.act(observation()).shape[1] == 7  # still serving


def test_websocket_messages_are_capped_on_both_sides():
    from websockets.exceptions import ConnectionClosedError
    from websockets.sync.client import connect

    from policies.remote import MAX_MESSAGE_BYTES

    with PolicyServer(Echo(), port=0, protocol="websocket") as server:
        with connect(server.url, compression=None, max_size=None) as raw:
            raw.recv(timeout=5)
            raw.send(b"\x00" * (MAX_MESSAGE_BYTES + 1))
            with pytest.raises(ConnectionClosedError):
                raw.recv(timeout=5)
            assert raw.close_code == 1009  # message too big
        with WebsocketPolicyClient(server.url, retries=0, timeout=5) as client:
            assert client.act(observation()).shape[1] == 7
    big = pack_msgpack({"actions": np.zeros((MAX_MESSAGE_BYTES // 28 + 1, 7), np.float32)})
    server, url = scripted_ws_server([big])
    try:
        with WebsocketPolicyClient(url, retries=0, timeout=5) as client:
            with pytest.raises(PolicyServerError, match="1009|too big|message"):
                client.act(observation())
    finally:
        server.shutdown()
