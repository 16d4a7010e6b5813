"""Policies that run in another process: clients for OpenVLA's REST and openpi's websocket protocols.

Wire formats (shared with :mod:`policies.serve`):

- OpenVLA REST: ``POST {url}/act`` with a JSON body whose numpy arrays are encoded by
  json-numpy (``{"__numpy__": base64, "dtype": descr, "shape": [...]}``):
  ``{"image": uint8 (H, W, 3), "instruction": str, "unnorm_key": optional str}``; the answer is
  the json-numpy encoded action ``(7,)`` (our server may answer a chunk ``(k, 7)``). Our client
  also sends ``"reset": true`` on the first request of an episode; servers that do not know the
  key ignore it.
- openpi websocket: the server sends a msgpack metadata map on connect; then every binary
  frame from the client is an observation map and every answer a map with ``actions``
  ``(k, action_dim)`` plus timings. Arrays are msgpack maps ``{b"__ndarray__": True, b"data":
  raw bytes, b"dtype": dtype.str, b"shape": shape}``. A failing server sends the traceback as a
  text frame and closes with code 1011.

A server that is down, times out after the retries, answers non-200 or sends something that is
not an action raises :class:`PolicyServerError` naming the URL: never a made-up action.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import json_numpy
import msgpack
import numpy as np

from policies.base import check_action, check_instruction, check_observation
from wm_env.errors import WmGymError, lookup
from wm_env.spaces import ACTION_DIM

T = TypeVar("T")


class PolicyServerError(WmGymError, RuntimeError):
    """A remote policy could not give an action; the message names the URL and the cause."""

    def __init__(self, url: str, problem: str) -> None:
        self.url, self.problem = url, problem
        super().__init__(f"policy server {url}: {problem}")


# --------------------------------------------------------------------------- codecs


def encode_json(payload: Any) -> str:
    """JSON text with numpy arrays in json-numpy's format (what OpenVLA's server reads)."""
    return json_numpy.dumps(payload)


def decode_json(text: str | bytes) -> Any:
    """Inverse of :func:`encode_json`: json-numpy objects come back as numpy arrays.

    Arrays of dtypes that are not plain data (object, void, complex, datetimes) are refused
    before numpy reads their bytes (:func:`wire_dtype`); JSON nested too deeply to parse raises
    ValueError, not RecursionError.
    """
    try:
        return json.loads(text, object_hook=_safe_numpy_hook)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _safe_numpy_hook(obj: dict) -> Any:
    if "__numpy__" in obj:
        wire_dtype(obj.get("dtype"))
    return json_numpy.object_hook(obj)


def _pack_numpy(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "VOc":
            raise TypeError(f"cannot send arrays of dtype {obj.dtype} over msgpack")
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__} over msgpack")


# Largest websocket message either side accepts: a 7-D action chunk or a few 256x256 images
# are far below it; a peer sending more is refused before anything is decoded.
MAX_MESSAGE_BYTES = 32 * 2**20
UNSAFE_DTYPE_KINDS = "VOcMm"  # void/structured, object, complex, datetimes: never from the wire


def wire_dtype(text: Any) -> np.dtype:
    """The numpy dtype a peer named, refusing any that is not plain data.

    An object dtype (or a structured one holding objects) would make numpy read pointers out
    of the peer's bytes, which crashes the process; openpi's own msgpack-numpy refuses void,
    object and complex arrays for the same reason.
    """
    if not isinstance(text, (str, bytes)):
        raise ValueError(f"array dtype must be a string; got {type(text).__name__}")
    try:
        dtype = np.dtype(text.decode() if isinstance(text, bytes) else text)
    except TypeError as exc:
        raise ValueError(f"unknown array dtype {text!r}") from exc
    if dtype.hasobject or dtype.kind in UNSAFE_DTYPE_KINDS:
        raise ValueError(f"refusing an array of dtype {dtype} from the wire (only plain data)")
    return dtype


def _unpack_numpy(obj: dict) -> Any:
    def get(key: str) -> Any:  # openpi packs bytes keys; accept str keys from other packers
        if key.encode() in obj:
            return obj[key.encode()]
        if key not in obj:
            raise ValueError(f"array map without {key!r}")
        return obj[key]

    if b"__ndarray__" in obj or "__ndarray__" in obj:
        dtype, data, shape = wire_dtype(get("dtype")), get("data"), get("shape")
        if not isinstance(data, bytes):
            raise ValueError(f"array data must be bytes; got {type(data).__name__}")
        if not isinstance(shape, (list, tuple)) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise ValueError(f"array shape must be a list of ints >= 0; got {shape!r}")
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
            raise ValueError(
                f"array of shape {list(shape)} and dtype {dtype} needs "
                f"{int(np.prod(shape, dtype=np.int64)) * dtype.itemsize} bytes; got {len(data)}"
            )
        return np.ndarray(buffer=data, dtype=dtype, shape=tuple(shape))
    if b"__npgeneric__" in obj or "__npgeneric__" in obj:
        return wire_dtype(get("dtype")).type(get("data"))
    return obj


def pack_msgpack(payload: Any) -> bytes:
    """msgpack bytes with numpy arrays as openpi's ``__ndarray__`` maps."""
    return msgpack.packb(payload, default=_pack_numpy, use_bin_type=True)


def unpack_msgpack(data: bytes) -> Any:
    """Inverse of :func:`pack_msgpack` (arrays come back as read-only numpy views)."""
    return msgpack.unpackb(data, object_hook=_unpack_numpy, raw=False, strict_map_key=False)


# --------------------------------------------------------------------------- retries


def _with_retries(
    url: str,
    call: Callable[[], T],
    retryable: tuple[type[BaseException], ...],
    retries: int,
    backoff: float,
) -> T:
    """Run ``call``; on a ``retryable`` error wait ``backoff * 2**i`` s and try again (``retries`` times)."""
    for attempt in range(retries + 1):
        try:
            return call()
        except retryable as exc:
            if attempt == retries:
                raise PolicyServerError(
                    url, f"{type(exc).__name__}: {exc} (after {retries + 1} attempts)"
                ) from exc
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def _check_retry_settings(timeout: float, retries: int, backoff: float) -> None:
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds; got {timeout}")
    if isinstance(retries, bool) or int(retries) != retries or retries < 0:
        raise ValueError(f"retries must be an integer >= 0; got {retries!r}")
    if not backoff >= 0:
        raise ValueError(f"backoff must be >= 0 seconds; got {backoff}")


def _server_action(url: str, value: Any) -> np.ndarray:
    """Validate what a server sent as actions: float32 ``(k, 7)`` or a PolicyServerError."""
    if isinstance(value, (str, Mapping)) or value is None:
        raise PolicyServerError(url, f"answered {str(value)[:200]!r} instead of an action")
    shape = np.shape(value)
    if len(shape) not in (1, 2) or shape[-1] != ACTION_DIM:
        raise PolicyServerError(
            url,
            f"answered an invalid action of shape {shape}; expected ({ACTION_DIM},) or (k, {ACTION_DIM})",
        )
    try:
        return check_action(value, "the server")
    except (ValueError, TypeError) as exc:
        raise PolicyServerError(url, f"answered an invalid action: {exc}") from exc


# --------------------------------------------------------------------------- REST


class RestPolicyClient:
    """A policy served over OpenVLA's REST protocol (``POST {url}/act``, json-numpy bodies).

    Args:
        url: server address, e.g. ``http://127.0.0.1:8000`` (``/act`` is appended).
        unnorm_key: dataset statistics the server un-normalizes with (sent when given).
        timeout: seconds to wait for each answer.
        retries: extra attempts after a connection error, a time-out or a 502/503/504 answer.
        backoff: seconds before the first retry, doubled for each further one.
        name: the policy's name in results (default ``rest:<url>``).
    """

    RETRY_STATUS = (502, 503, 504)

    def __init__(
        self,
        url: str,
        unnorm_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.25,
        name: str | None = None,
    ) -> None:
        import requests

        if not url.startswith(("http://", "https://")):
            raise ValueError(f"REST policy url must start with http:// or https://; got {url!r}")
        _check_retry_settings(timeout, retries, backoff)
        self.url = url.rstrip("/").removesuffix("/act")  # the server's address, not its endpoint
        self.unnorm_key, self.timeout, self.retries, self.backoff = (
            unnorm_key,
            timeout,
            retries,
            backoff,
        )
        self.name = name or f"rest:{self.url}"
        self._session = requests.Session()
        self._new_episode = True

    def reset(self, instruction: str) -> None:
        """Start an episode: the next request carries ``"reset": true``."""
        check_instruction(instruction)
        self._new_episode = True

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Send the image, instruction and (if the observation has one) the proprio ``state``;
        return float32 ``(7,)`` (or ``(k, 7)`` for a chunk).

        Raises:
            ValueError: a malformed observation (checked before anything is sent).
            PolicyServerError: the server is down, answered non-200, or sent no valid action.
        """
        import requests

        image, instruction = check_observation(obs)
        payload: dict[str, Any] = {"image": image, "instruction": instruction}
        if obs.get("state") is not None:  # proprio, for servers whose policy reads it
            payload["state"] = np.asarray(obs["state"], np.float32)
        if self.unnorm_key is not None:
            payload["unnorm_key"] = self.unnorm_key
        if self._new_episode:
            payload["reset"] = True
        body = encode_json(payload)
        endpoint = f"{self.url}/act"

        def post() -> requests.Response:
            response = self._session.post(
                endpoint,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=self.timeout,
            )
            if response.status_code in self.RETRY_STATUS:
                raise _RetryableStatus(response)
            return response

        try:
            response = _with_retries(
                endpoint,
                post,
                (requests.ConnectionError, requests.Timeout, _RetryableStatus),
                self.retries,
                self.backoff,
            )
        except PolicyServerError as exc:
            cause = exc.__cause__
            if isinstance(cause, _RetryableStatus):
                raise PolicyServerError(endpoint, cause.describe()) from None
            raise
        if response.status_code != 200:
            raise PolicyServerError(endpoint, _RetryableStatus(response).describe())
        try:
            value = decode_json(response.text)
        except ValueError as exc:
            raise PolicyServerError(
                endpoint, f"answered something that is not JSON: {response.text[:200]!r}"
            ) from exc
        if isinstance(value, Mapping) and "action" in value:
            value = value["action"]
        action = _server_action(endpoint, value)  # (k, 7)
        self._new_episode = False
        return action[0] if np.ndim(value) == 1 else action

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._session.close()

    def __enter__(self) -> RestPolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RetryableStatus(Exception):
    def __init__(self, response: Any) -> None:
        self.status, self.text = response.status_code, response.text
        super().__init__(self.describe())

    def describe(self) -> str:
        return f"answered HTTP {self.status}: {self.text[:300]}"


# --------------------------------------------------------------------------- websocket

# Our observation keys -> openpi's keys; values our observation lacks are filled from FILL.
KEY_MAPS: dict[str, dict[str, str]] = {
    "libero": {
        "image": "observation/image",
        "image_wrist": "observation/wrist_image",
        "state": "observation/state",
        "instruction": "prompt",
    },
    # openpi's DROID example: an exterior and a wrist camera, 7 joint angles, the gripper
    "droid": {
        "image": "observation/exterior_image_1_left",
        "image_wrist": "observation/wrist_image_left",
        "state": "observation/gripper_position",
        "instruction": "prompt",
    },
}
FILL: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # LIBERO policies expect a wrist view and the 8-D proprio state; where our observation has
    # neither (no wrist camera; a world model that carries no state), they get a black image and
    # zeros (say so in results: the policy sees less than it was trained on).
    "observation/wrist_image": lambda image: np.zeros_like(image),
    "observation/state": lambda image: np.zeros(8, np.float32),
}
DROID_FILL: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # our 8-D state has no joint angles: DROID policies get zeros (they see less than trained on)
    "observation/wrist_image_left": lambda image: np.zeros_like(image),
    "observation/joint_position": lambda image: np.zeros(7, np.float32),
    "observation/gripper_position": lambda image: np.zeros(1, np.float32),
}
FILLS = {"libero": FILL, "droid": DROID_FILL}
PANDA_MAX_OPENING_M = 0.08  # the Panda's fingers open 4 cm each


def quaternion_to_axis_angle(quaternion: np.ndarray) -> np.ndarray:
    """``(x, y, z, w)`` unit quaternion -> axis-angle ``(3,)`` (robosuite's ``quat2axisangle``)."""
    xyz, w = np.asarray(quaternion[:3], np.float64), float(np.clip(quaternion[3], -1.0, 1.0))
    sine = np.sqrt(max(1.0 - w * w, 0.0))
    if sine < 1e-8:
        return np.zeros(3)
    return xyz * 2.0 * np.arccos(w) / sine


def libero_state(state: np.ndarray) -> np.ndarray:
    """Our 8-D state (eef xyz, quaternion xyzw, gripper opening) -> LIBERO's 8-D
    ``observation/state`` as openpi's LIBERO example builds it: eef xyz, axis-angle (3), and
    the two finger joint positions (half the opening each, the second negative)."""
    state = np.asarray(state, np.float64)
    if state.shape != (8,):
        raise ValueError(f"state must be our 8-D proprio layout; got shape {state.shape}")
    half = state[7] / 2.0
    return np.concatenate([state[:3], quaternion_to_axis_angle(state[3:7]), [half, -half]]).astype(
        np.float32
    )


# values converted from our layout into the server's (by the server's key)
def droid_gripper(state: np.ndarray) -> np.ndarray:
    """Our 8-D state -> DROID's ``observation/gripper_position``: how closed the gripper is,
    ``(1,)`` in [0, 1] (0 open, 1 closed), from our opening in metres."""
    state = np.asarray(state, np.float64)
    if state.shape != (8,):
        raise ValueError(f"state must be our 8-D proprio layout; got shape {state.shape}")
    return np.array([np.clip(1.0 - state[7] / PANDA_MAX_OPENING_M, 0.0, 1.0)], np.float32)


CONVERT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "observation/state": libero_state,
    "observation/gripper_position": droid_gripper,
}


class WebsocketPolicyClient:
    """A policy served over openpi's websocket protocol; ``act`` returns its action chunk.

    The connection is opened (with the metadata handshake) at construction. ``act`` returns the
    chunk ``(k, 7)`` as the server sent it; wrap the client in
    :class:`policies.wrappers.ChunkExecutor` to execute it one action per step.

    Args:
        url: ``ws://host:port``.
        key_map: our observation key -> the server's key (``"libero"``, ``"droid"`` or a dict;
            our ``instruction`` is the one for the prompt).
        fill: server key -> function of our main image giving the value to send when our
            observation has no such key (default: the named map's, :data:`FILLS`, black wrist
            image and zero state; :data:`FILL` for a dict).
        timeout: seconds for the handshake and for each answer.
        retries, backoff: reconnect attempts after a connection error and the first wait.
        name: the policy's name in results (default ``ws:<url>``).
    """

    def __init__(
        self,
        url: str,
        key_map: str | Mapping[str, str] = "libero",
        fill: Mapping[str, Callable[[np.ndarray], Any]] | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.25,
        name: str | None = None,
    ) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"websocket policy url must start with ws:// or wss://; got {url!r}")
        _check_retry_settings(timeout, retries, backoff)
        self.key_map = dict(
            lookup("key map", key_map, KEY_MAPS) if isinstance(key_map, str) else key_map
        )
        if "image" not in self.key_map or "instruction" not in self.key_map:
            raise ValueError(f"key_map must map 'image' and 'instruction'; got {self.key_map}")
        default_fill = FILLS.get(key_map, FILL) if isinstance(key_map, str) else FILL
        self.fill = dict(default_fill if fill is None else fill)
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.name = name or f"ws:{url}"
        self._connection: Any = None
        self.metadata: dict = {}
        self._connect()

    def _connect(self) -> None:
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        def open_and_handshake() -> Any:
            connection = connect(
                self.url,
                compression=None,
                max_size=MAX_MESSAGE_BYTES,
                open_timeout=self.timeout,
            )
            try:
                metadata = connection.recv(timeout=self.timeout)
            except BaseException:
                connection.close()
                raise
            return connection, metadata

        try:
            self._connection, metadata = _with_retries(
                self.url,
                open_and_handshake,
                (OSError, TimeoutError, InvalidHandshake),
                self.retries,
                self.backoff,
            )
        except InvalidURI as exc:
            raise ValueError(f"invalid websocket url {self.url!r}: {exc}") from exc
        if isinstance(metadata, str):
            self.close()
            raise PolicyServerError(
                self.url, f"sent text instead of the metadata map: {metadata[:300]}"
            )
        try:
            self.metadata = unpack_msgpack(metadata)
        except Exception as exc:
            self.close()
            raise PolicyServerError(self.url, f"sent metadata that is not msgpack: {exc}") from exc
        if not isinstance(self.metadata, dict):
            self.close()
            raise PolicyServerError(self.url, f"sent metadata {self.metadata!r}, not a map")

    def reset(self, instruction: str) -> None:
        """Start an episode (openpi servers keep no per-episode state)."""
        check_instruction(instruction)

    def request(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Map our observation to the server's keys (see ``key_map``, ``fill``)."""
        image, instruction = check_observation(obs)
        request: dict[str, Any] = {}
        for ours, theirs in self.key_map.items():
            value = instruction if ours == "instruction" else obs.get(ours)
            if value is None:
                if theirs not in self.fill:
                    raise ValueError(f"observation has no {ours!r} for the server's {theirs!r}")
                value = self.fill[theirs](image)
            elif theirs in CONVERT:
                value = CONVERT[theirs](value)
            request[theirs] = value if isinstance(value, str) else np.asarray(value)
        for theirs, make in self.fill.items():
            request.setdefault(theirs, make(image))
        return request

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Send the observation; return the server's action chunk as float32 ``(k, 7)``.

        Raises:
            ValueError: a malformed observation (checked before anything is sent).
            PolicyServerError: the connection failed, the server sent an error or no actions.
        """
        from websockets.exceptions import ConnectionClosed, ConnectionClosedError

        message = pack_msgpack(self.request(obs))

        def exchange() -> bytes | str:
            if self._connection is None:
                self._connect()
            try:
                self._connection.send(message)
                return self._connection.recv(timeout=self.timeout)
            except (ConnectionClosed, OSError):  # OSError includes TimeoutError
                self.close()  # a late answer must not be taken for the next one: reconnect
                raise

        try:
            answer = _with_retries(
                self.url, exchange, (ConnectionClosed, OSError), self.retries, self.backoff
            )
        except PolicyServerError as exc:
            if isinstance(exc.__cause__, ConnectionClosedError) and exc.__cause__.rcvd is not None:
                close = exc.__cause__.rcvd
                raise PolicyServerError(
                    self.url, f"closed the connection ({close.code} {close.reason})"
                ) from exc.__cause__
            raise
        if isinstance(answer, str):  # openpi: the traceback as text, then close 1011
            self.close()
            raise PolicyServerError(self.url, f"failed:\n{answer}")
        try:
            response = unpack_msgpack(answer)
        except Exception as exc:
            raise PolicyServerError(
                self.url, f"answered something that is not msgpack: {exc}"
            ) from exc
        if not isinstance(response, Mapping) or "actions" not in response:
            keys = sorted(response) if isinstance(response, Mapping) else type(response).__name__
            raise PolicyServerError(self.url, f"answered without 'actions' (got {keys})")
        return _server_action(self.url, np.asarray(response["actions"]))  # (k, 7)

    def close(self) -> None:
        """Close the connection (a later ``act`` reconnects)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> WebsocketPolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
