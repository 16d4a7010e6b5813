"""Serve any project policy over OpenVLA's REST protocol or openpi's websocket protocol.

``wmgym serve --policy random --port 8000`` (see :class:`ServeConfig`) or, in Python::

    with PolicyServer(RandomPolicy(seed=0), port=0) as server:  # port 0: any free port
        client = RestPolicyClient(server.url)

REST (FastAPI + uvicorn, as OpenVLA's deploy script): ``POST /act`` with a json-numpy body
``{"image": uint8 (H, W, 3), "instruction": str, "unnorm_key": optional, "reset": optional,
"state": optional float (S,) proprio (ours: 8-D, ``wm_env.spaces.STATE_NAMES``)}``
-> the json-numpy encoded action ``(7,)`` (or the policy's chunk ``(k, 7)``). A body that is not
JSON gets 400; a missing image, an image of the wrong dtype or shape or an empty instruction
get 422; a body over 32 MiB gets 413; a policy that fails gets 500; each with a message.
``GET /healthz`` -> 200.
The policy is reset when a request says ``"reset": true`` or the instruction changes.

Websocket (openpi's protocol, see :mod:`policies.remote`): metadata map on connect, then one
msgpack observation per binary frame -> ``{"actions": (k, 7), "server_timing": {...}}``; an
error sends its message as a text frame (the full traceback only when started with ``debug``:
it names the server's files) and closes with 1011. ``GET /healthz`` -> 200.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from policies.base import Policy, check_action, check_observation
from policies.remote import (
    KEY_MAPS,
    MAX_MESSAGE_BYTES,
    decode_json,
    encode_json,
    pack_msgpack,
    unpack_msgpack,
)


class RequestError(ValueError):
    """A malformed request; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class PolicyHost:
    """One policy shared by all connections: serialises calls and resets on new episodes."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._instruction: str | None = None

    def act(self, obs: dict[str, Any], reset: bool = False) -> np.ndarray:
        """Validated float32 ``(7,)`` or ``(k, 7)``; resets first on ``reset`` or a new instruction."""
        _, instruction = check_observation(obs)
        with self._lock:
            if reset or instruction != self._instruction:
                self.policy.reset(instruction)
                self._instruction = instruction
            raw = self.policy.act(obs)
            action = check_action(raw, self.policy.name)
        return action[0] if np.ndim(raw) == 1 else action


# --------------------------------------------------------------------------- REST


def parse_act_request(body: bytes) -> tuple[dict[str, Any], bool]:
    """Decode a ``POST /act`` body into ``(observation, reset)``.

    The observation has ``image``, ``instruction`` and, when given, ``unnorm_key``. OpenVLA's
    ``{"encoded": "<json-numpy text>"}`` wrapping is accepted too.

    Raises:
        RequestError: 400 for a body that is not a JSON object, 422 for bad fields.
    """
    try:
        payload = decode_json(body)
        if isinstance(payload, dict) and isinstance(payload.get("encoded"), str):
            payload = decode_json(payload["encoded"])
    except (ValueError, TypeError, KeyError) as exc:
        raise RequestError(400, f"request body is not json-numpy encoded JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise RequestError(400, f"request body must be a JSON object; got {type(payload).__name__}")
    if "image" not in payload:
        raise RequestError(422, f"request has no 'image'; got keys {sorted(payload)}")
    obs: dict[str, Any] = {"image": payload["image"], "instruction": payload.get("instruction")}
    if isinstance(obs["image"], list):
        raise RequestError(
            422, "'image' must be a json-numpy encoded uint8 (H, W, 3) array, not a JSON list"
        )
    try:
        check_observation(obs)
    except ValueError as exc:
        raise RequestError(422, str(exc)) from exc
    unnorm_key = payload.get("unnorm_key")
    if unnorm_key is not None:
        if not isinstance(unnorm_key, str):
            raise RequestError(422, f"'unnorm_key' must be a string; got {unnorm_key!r}")
        obs["unnorm_key"] = unnorm_key
    state = payload.get("state")
    if state is not None:
        try:
            state = np.asarray(state, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise RequestError(422, f"'state' must be a list of numbers: {exc}") from exc
        if state.ndim != 1 or not 1 <= state.size <= 64 or not np.isfinite(state).all():
            raise RequestError(
                422, f"'state' must be a finite 1-D vector of 1 to 64 numbers; got {state.shape}"
            )
        obs["state"] = state
    reset = payload.get("reset", False)
    if not isinstance(reset, bool):
        raise RequestError(422, f"'reset' must be true or false; got {reset!r}")
    return obs, reset


async def _capped_body(request: Request, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """The request body, or a 413 RequestError once it passes ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"request body exceeds {limit} bytes")
    return bytes(body)


def create_rest_app(policy: Policy):
    """A FastAPI app serving ``policy`` at ``POST /act`` (and ``GET /healthz``)."""
    host = PolicyHost(policy)
    app = FastAPI(title=f"wm-gym policy server: {policy.name}")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "policy": policy.name}

    @app.post("/act")
    async def act(request: Request) -> Response:
        try:
            obs, reset = parse_act_request(await _capped_body(request))
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        try:
            action = await run_in_threadpool(host.act, obs, reset)
        except ValueError as exc:  # e.g. an unnorm_key the policy does not know
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=422)
        except Exception as exc:
            return JSONResponse(
                {"error": f"policy {policy.name} failed: {type(exc).__name__}: {exc}"},
                status_code=500,
            )
        return Response(encode_json(action), media_type="application/json")

    return app


class _UvicornThread:
    def __init__(self, app, host: str, port: int, log_level: str) -> None:
        import uvicorn

        config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="rest-policy")

    def start(self, timeout: float = 30.0) -> int:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError(
                    f"REST policy server did not start on {self.server.config.host}:"
                    f"{self.server.config.port} (port in use?)"
                )
            time.sleep(0.01)
        return self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True  # graceful: finish open requests
        self.thread.join(timeout=10)
        if self.thread.is_alive():  # a connection that does not close: stop anyway
            self.server.force_exit = True
            self.thread.join(timeout=5)


# --------------------------------------------------------------------------- websocket


class _WebsocketThread:
    """openpi's protocol on a ``websockets`` sync server (one thread per connection)."""

    def __init__(
        self, policy: Policy, host: str, port: int, key_map: Mapping[str, str], debug: bool = False
    ) -> None:
        from websockets.sync.server import serve

        self.debug = debug
        self.policy_host = PolicyHost(policy)
        self.from_theirs = {theirs: ours for ours, theirs in key_map.items()}
        self.metadata = {"policy": policy.name, "action_dim": 7, "keys": sorted(self.from_theirs)}
        self.server = serve(
            self._handle,
            host,
            port,
            compression=None,
            max_size=MAX_MESSAGE_BYTES,
            process_request=self._health,
        )
        self.thread = threading.Thread(
            target=self.server.serve_forever, daemon=True, name="ws-policy"
        )

    @staticmethod
    def _health(connection, request):
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "OK\n")
        return None

    def observation(self, request: Any) -> dict[str, Any]:
        """Map a decoded request back to our observation keys."""
        if not isinstance(request, dict):
            raise ValueError(f"observation must be a msgpack map; got {type(request).__name__}")
        obs = {self.from_theirs[k]: v for k, v in request.items() if k in self.from_theirs}
        if "image" not in obs:
            wanted = [k for k, v in self.from_theirs.items() if v == "image"]
            raise ValueError(f"observation has no {wanted}; got keys {sorted(request)}")
        return obs

    def _handle(self, connection) -> None:
        from websockets.exceptions import ConnectionClosed

        connection.send(pack_msgpack(self.metadata))
        while True:
            try:
                message = connection.recv()
            except ConnectionClosed:
                return
            try:
                if isinstance(message, str):
                    raise ValueError("expected a binary msgpack frame, got text")
                start = time.perf_counter()
                actions = check_action(
                    self.policy_host.act(self.observation(unpack_msgpack(message)))
                )  # (k, 7)
                infer_ms = 1000 * (time.perf_counter() - start)
                connection.send(
                    pack_msgpack({"actions": actions, "server_timing": {"infer_ms": infer_ms}})
                )
            except ConnectionClosed:
                return
            except Exception as exc:
                detail = traceback.format_exc() if self.debug else f"{type(exc).__name__}: {exc}"
                connection.send(detail)
                connection.close(1011, "Internal server error. Error included in previous frame.")
                return

    def start(self, timeout: float = 30.0) -> int:
        self.thread.start()
        return self.server.socket.getsockname()[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


# --------------------------------------------------------------------------- public server


class PolicyServer:
    """Serve ``policy`` from a background thread; a context manager.

    Args:
        policy: any project policy.
        host, port: where to listen (``port=0``: a free port, see :attr:`url`).
        protocol: ``"rest"`` (OpenVLA) or ``"websocket"`` (openpi).
        key_map: websocket only: our observation key -> the client's key (default LIBERO's).
        log_level: uvicorn's log level (REST).
        debug: websocket only: error frames carry the server's full traceback (else the message).
    """

    def __init__(
        self,
        policy: Policy,
        host: str = "127.0.0.1",
        port: int = 8000,
        protocol: Literal["rest", "websocket"] = "rest",
        key_map: str | Mapping[str, str] = "libero",
        log_level: str = "warning",
        debug: bool = False,
    ) -> None:
        from wm_env.errors import lookup

        if isinstance(port, bool) or int(port) != port or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535; got {port!r}")
        if protocol == "rest":
            self._backend: Any = _UvicornThread(create_rest_app(policy), host, port, log_level)
        elif protocol == "websocket":
            mapping = lookup("key map", key_map, KEY_MAPS) if isinstance(key_map, str) else key_map
            self._backend = _WebsocketThread(policy, host, port, mapping, debug)
        else:
            lookup("protocol", protocol, {"rest": None, "websocket": None})
        self.policy, self.host, self.protocol = policy, host, protocol
        self.port: int | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (REST) or ``ws://host:port`` (websocket) once started."""
        if self.port is None:
            raise RuntimeError("the server is not started")
        scheme = "http" if self.protocol == "rest" else "ws"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> PolicyServer:
        """Start listening; returns self (``url`` is then known)."""
        self.port = self._backend.start()
        return self

    def stop(self) -> None:
        """Stop listening and wait for the server thread."""
        self._backend.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server thread ends or ``timeout`` passes; returns whether it still runs."""
        self._backend.thread.join(timeout)
        return self._backend.thread.is_alive()

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- CLI


@dataclass
class ServeConfig:
    """Serve a policy over the network (``wmgym serve``)."""

    policy: str
    """``random``, ``zero``, a checkpoint directory (config.json with a ``type``) or a URL."""
    host: str = "127.0.0.1"
    """Interface to listen on (``0.0.0.0`` for every interface)."""
    port: int = 8000
    """Port to listen on (0: a free one, printed at start)."""
    protocol: Literal["rest", "websocket"] = "rest"
    """``rest``: OpenVLA's ``POST /act``; ``websocket``: openpi's msgpack protocol."""
    option: tuple[str, ...] = ()
    """``key=value`` options for the policy loader (values parsed as JSON when they are), e.g. ``seed=0``."""
    log_level: str = "warning"
    """uvicorn log level (``info`` logs every request)."""
    debug: bool = False
    """websocket: send clients the full traceback of an error (it names this machine's files)."""


def parse_options(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``["seed=0", "device=cpu"]`` -> ``{"seed": 0, "device": "cpu"}`` (JSON values when valid)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"option must look like key=value; got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve(config: ServeConfig) -> None:
    """Load the policy and serve it until interrupted (Ctrl-C)."""
    from policies.registry import load_policy

    policy = load_policy(config.policy, **parse_options(config.option))
    server = PolicyServer(
        policy,
        config.host,
        config.port,
        config.protocol,
        log_level=config.log_level,
        debug=config.debug,
    ).start()
    endpoint = "POST /act" if config.protocol == "rest" else "openpi websocket"
    print(f"serving {policy.name} on {server.url} ({endpoint}); Ctrl-C to stop", flush=True)
    # Ctrl-C / SIGTERM only set a flag: a KeyboardInterrupt raised inside Thread.join can leave
    # the joined thread's state lock inconsistent (a rare hang at shutdown was seen in tests)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        while server.wait(timeout=0.2) and not stop.is_set():
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
