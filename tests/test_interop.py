"""Our servers and clients against the published clients and codecs, run in their own virtual
environment (``scripts/interop_venv.sh``: openpi-client pins numpy<2, which ours cannot share).

- openpi's own ``WebsocketClientPolicy`` (package ``openpi-client``) gets actions from
  ``wmgym serve --protocol websocket`` (our server, in-process here);
- our ``WebsocketPolicyClient`` gets actions from a server that speaks openpi's protocol with
  ``openpi_client.msgpack_numpy`` (metadata first, then one msgpack frame per request).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from policies.remote import WebsocketPolicyClient
from policies.serve import PolicyServer

ROOT = Path(__file__).resolve().parents[1]
INTEROP_PYTHON = ROOT / ".venv-interop" / "bin" / "python"

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def interop_python() -> Path:
    if not INTEROP_PYTHON.exists():  # make test builds it; say how when run by hand
        pytest.fail(f"{INTEROP_PYTHON} is missing: run `bash scripts/interop_venv.sh` first")
    return INTEROP_PYTHON


class Half:
    """Answers a chunk of 4 actions of 0.5, and remembers the prompts it saw."""

    name = "half"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def reset(self, instruction: str) -> None:
        pass

    def act(self, obs: dict) -> np.ndarray:
        self.prompts.append(obs["instruction"])
        return np.full((4, 7), 0.5, np.float32)


def test_openpis_own_client_gets_actions_from_our_server(interop_python):
    policy = Half()
    with PolicyServer(policy, port=0, protocol="websocket") as server:
        port = server.url.rsplit(":", 1)[1]
        code = (
            "import numpy as np\n"
            "from openpi_client import websocket_client_policy\n"
            f"client = websocket_client_policy.WebsocketClientPolicy(host='127.0.0.1', port={port})\n"
            "out = client.infer({'observation/image': np.full((64, 64, 3), 7, np.uint8),\n"
            "                    'observation/state': np.zeros(8, np.float32),\n"
            "                    'prompt': 'lift the red cube'})\n"
            "print(out['actions'].shape, float(out['actions'].mean()))\n"
        )
        run = subprocess.run([str(interop_python), "-c", code], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["(4,", "7)", "0.5"]
    assert policy.prompts == ["lift the red cube"]


OPENPI_LIKE_SERVER = """
import asyncio, sys
import numpy as np
import websockets
from openpi_client import msgpack_numpy

async def handler(ws):
    await ws.send(msgpack_numpy.packb({"server": "openpi-like"}))
    async for message in ws:
        obs = msgpack_numpy.unpackb(message)
        mean = float(obs["observation/image"].mean()) / 255
        state = obs["observation/state"]
        await ws.send(msgpack_numpy.packb({"actions": np.full((3, 7), mean, np.float32),
                                           "state_seen": state}))

async def main():
    async with websockets.serve(handler, "127.0.0.1", int(sys.argv[1]), compression=None):
        print("ready", flush=True)
        await asyncio.Future()

asyncio.run(main())
"""


def test_our_client_gets_actions_from_a_server_on_openpis_codec(interop_python, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "server.py"
    script.write_text(OPENPI_LIKE_SERVER)
    server = subprocess.Popen([str(interop_python), str(script), str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout.readline().strip() == "ready", server.stderr.read()[-2000:]
        image = np.full((64, 64, 3), 51, np.uint8)
        deadline = time.monotonic() + 20
        while True:
            try:
                client = WebsocketPolicyClient(f"ws://127.0.0.1:{port}", retries=0, timeout=10)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with client:
            assert client.metadata == {"server": "openpi-like"}
            chunk = client.act({"image": image, "instruction": "lift", "state": np.zeros(8)})
        assert chunk.shape == (3, 7) and np.allclose(chunk, 0.2)
    finally:
        server.kill()
        server.wait()
        server.stdout.close()
        server.stderr.close()
