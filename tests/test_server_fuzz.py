"""Fuzzing both policy servers on loopback (bounded: a fixed seed, 60 requests each).

Random and adversarial bodies (json-numpy for REST, msgpack-numpy for websocket): garbage bytes,
truncated bodies, arrays of every unsafe dtype, wrong, negative and huge shapes, data that does
not match its shape, deep nesting, wrong types in every field. The server must answer each with
an action or a clear error (REST: a 4xx whose JSON holds ``error``; websocket: a text frame with
the message and no traceback, as it runs without ``--debug``), and still serve a valid request
afterwards.
"""

from __future__ import annotations

import base64
import collections
import json
import random

import msgpack
import numpy as np
import requests

from policies.remote import (
    WebsocketPolicyClient,
    decode_json,
    encode_json,
    pack_msgpack,
    unpack_msgpack,
)
from policies.serve import PolicyServer

CASES = 60
DTYPES = ["|u1", "<f4", "<f8", ">i4", "|b1", "|O", "<c8", "<c16", "V4", "V16", "<M8[s]",
          "<m8[s]", "<U4", "|S4", "bogus", "", "float32", "uint8"]  # fmt: skip
SHAPES = [[64, 64, 3], [], [0], [-1], [2**40], [64, 64], [8, 8, 3], [1] * 40, "64",
          [64.5, 64, 3], None]  # fmt: skip


class Constant:
    """A policy that always answers the same action."""

    name = "constant"

    def reset(self, instruction: str) -> None:
        pass

    def act(self, obs: dict) -> np.ndarray:
        image = np.asarray(obs["image"])
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image must be (H, W, 3); got {image.shape}")
        return np.full(7, 0.25, np.float32)


def random_array_fields(rng: random.Random, key_prefix: str) -> dict:
    """An ``ndarray``-like dict whose dtype, shape and data are drawn independently."""
    size = rng.choice([0, 1, 3, 16, 64 * 64 * 3, 64 * 64 * 3 * 4])
    data = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (size // 64 + 1)
    return {
        "data": data[:size],
        "dtype": rng.choice(DTYPES + [rng.randint(-5, 5), ["a", "|u1"]]),
        "shape": rng.choice(SHAPES),
        "prefix": key_prefix,
    }


def nested(rng: random.Random, depth: int):
    value = rng.choice([1, "x", None, 1.5, True])
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def rest_body(rng: random.Random) -> bytes:
    kind = rng.randrange(7)
    valid = {"image": np.full((64, 64, 3), 7, np.uint8), "instruction": "lift the cube"}
    if kind == 0:  # garbage bytes
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 512)))
    if kind == 1:  # a valid body cut short
        body = encode_json(valid).encode()
        return body[: rng.randint(0, len(body) - 1)]
    if kind == 2:  # a json-numpy array of random dtype, shape and data
        fields = random_array_fields(rng, "__numpy__")
        image = {"__numpy__": base64.b64encode(fields["data"]).decode(),
                 "dtype": fields["dtype"], "shape": fields["shape"]}  # fmt: skip
        return json.dumps({"image": image, "instruction": "x"}).encode()
    if kind == 3:  # deep nesting anywhere
        field = rng.choice(["image", "instruction", "unnorm_key", "extra"])
        body = {
            "image": [[[1, 2, 3]]],
            "instruction": "x",
            field: nested(rng, rng.randint(1, 3000)),
        }
        try:
            return json.dumps(body).encode()
        except RecursionError:
            return b'{"image": ' + b"[" * 5000 + b"]" * 5000 + b', "instruction": "x"}'
    if kind == 4:  # wrong types in every field
        return json.dumps(
            {
                "image": rng.choice([None, 3, "png", {}, [], [[1, 2]], [[[-1, 300, 2.5]]]]),
                "instruction": rng.choice([None, 3, [], {}, "", " ", "x" * 100_000]),
                "unnorm_key": rng.choice([None, 3, [], "bridge_orig"]),
            }
        ).encode()
    if kind == 5:  # not an object at all
        return json.dumps(rng.choice([[], 3, "act", None, [1, 2, 3], 1e308])).encode()
    body = encode_json(valid).encode()  # a valid body with one byte flipped
    at = rng.randrange(len(body))
    return body[:at] + bytes([body[at] ^ (1 << rng.randrange(8))]) + body[at + 1 :]


def websocket_frame(rng: random.Random) -> bytes | str:
    kind = rng.randrange(6)
    valid = {"observation/image": np.full((64, 64, 3), 7, np.uint8), "prompt": "lift the cube"}
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 512)))
    if kind == 1:
        frame = pack_msgpack(valid)
        return frame[: rng.randint(0, len(frame) - 1)]
    if kind == 2:
        fields = random_array_fields(rng, "__ndarray__")
        image = {b"__ndarray__": True, b"data": fields["data"], b"dtype": fields["dtype"],
                 b"shape": fields["shape"]}  # fmt: skip
        return msgpack.packb({"observation/image": image, "prompt": "x"}, use_bin_type=True)
    if kind == 3:
        return msgpack.packb(
            {"observation/image": rng.choice([None, 3, "png", {}, [], [[1, 2]]]),
             "prompt": rng.choice([None, 3, [], b"bytes", "x" * 100_000]),
             "observation/state": rng.choice([None, "s", [1.0] * 1000, {"a": 1}])},
            use_bin_type=True,
        )  # fmt: skip
    if kind == 4:
        return rng.choice(["a text frame", "{}", ""])  # text instead of binary
    return msgpack.packb(rng.choice([[], 3, "act", None, [1, 2], {1: 2}]), use_bin_type=True)


def test_the_rest_server_answers_every_fuzzed_request_and_keeps_serving():
    rng, statuses = random.Random(0), collections.Counter()
    with PolicyServer(Constant(), port=0, protocol="rest") as server:
        for case in range(CASES):
            body = rest_body(rng)
            response = requests.post(f"{server.url}/act", data=body, timeout=10)
            statuses[response.status_code] += 1
            assert response.status_code == 200 or 400 <= response.status_code < 500, (
                case,
                body[:200],
                response.status_code,
                response.text[:300],
            )
            if response.status_code != 200:
                assert response.json()["error"], (case, response.text[:300])
        body = encode_json({"image": np.full((64, 64, 3), 7, np.uint8), "instruction": "lift"})
        response = requests.post(f"{server.url}/act", data=body, timeout=10)
        assert response.status_code == 200
        assert np.allclose(np.asarray(decode_json(response.content)), 0.25)
    assert statuses[200] and len(statuses) >= 3, statuses  # the fuzz reached past the parser


def test_the_websocket_server_answers_every_fuzzed_frame_and_keeps_serving():
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    rng, errors = random.Random(1), set()
    with PolicyServer(Constant(), port=0, protocol="websocket") as server:
        for case in range(CASES):
            frame = websocket_frame(rng)
            with connect(server.url, compression=None) as raw:
                unpack_msgpack(raw.recv(timeout=10))  # the server's metadata
                raw.send(frame)
                try:
                    answer = raw.recv(timeout=10)
                except ConnectionClosed as closed:  # closing without a message is no answer
                    raise AssertionError(f"case {case}: closed without a message") from closed
            if isinstance(answer, str):  # an error: a message, never the server's traceback
                assert answer.strip() and "Traceback" not in answer, (case, answer[:300])
                errors.add(answer.split(":")[0] + answer.split(":")[1][:12])
            else:
                actions = unpack_msgpack(answer)["actions"]
                assert np.allclose(actions, 0.25), case
        with WebsocketPolicyClient(server.url, retries=0, timeout=10) as client:
            assert np.allclose(client.act({"image": np.full((64, 64, 3), 7, np.uint8),
                                           "instruction": "lift"}), 0.25)  # fmt: skip
    assert len(errors) >= 8, errors  # many different ways in, each told what was wrong
