"""Observation and action spaces shared by the ground-truth sim and the world-model env.

A policy runs unchanged in both worlds because both declare their spaces with these functions.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np
from gymnasium import spaces

ACTION_DIM = 7  # dx, dy, dz, droll, dpitch, dyaw, gripper (-1 open, +1 close)
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
INSTRUCTION_CHARSET = frozenset(string.ascii_letters + string.digits + " .,;:'\"!?-_()/&+")
MAX_INSTRUCTION_LENGTH = 256
RESOLUTIONS = (64, 128, 256)


def camera_key(camera: str, main_camera: str) -> str:
    """Observation key of a camera: ``image`` for the main one, ``image_<name>`` for extras."""
    return "image" if camera == main_camera else f"image_{camera}"


def camera_of_key(key: str) -> str:
    """Dataset camera name of an observation key: ``image`` -> ``image``, ``image_wrist`` -> ``wrist``."""
    return key if key == "image" else key.removeprefix("image_")


STATE_DIM = 8  # the sim's proprio: eef xyz (m), eef quaternion (x, y, z, w), gripper opening (m)
STATE_BOUND = 10.0  # |state| bound of the observation space: metres and unit quaternions
STATE_NAMES = ("eef_x", "eef_y", "eef_z", "eef_qx", "eef_qy", "eef_qz", "eef_qw", "gripper")


def state_space(dim: int = STATE_DIM, low=-STATE_BOUND, high=STATE_BOUND) -> spaces.Box:
    """``Box(low, high, (dim,), float32)``: the robot's proprioceptive state."""
    low = np.broadcast_to(np.asarray(low, dtype=np.float32), (dim,)).copy()
    high = np.broadcast_to(np.asarray(high, dtype=np.float32), (dim,)).copy()
    return spaces.Box(low=low, high=high, shape=(dim,), dtype=np.float32)


def observation_space(
    height: int, width: int, extra_cameras: Sequence[str] = (), state: spaces.Box | None = None
) -> spaces.Dict:
    """``Dict(image=Box(uint8, (H, W, 3)), instruction=Text, [image_<camera>=...], [state=...])``:
    ``state`` (:func:`state_space`) is the robot's proprioceptive state (the sim's layout:
    :data:`STATE_NAMES`), present when given."""
    image = spaces.Box(low=0, high=255, shape=(height, width, 3), dtype=np.uint8)
    items: dict[str, spaces.Space] = {
        "image": image,
        "instruction": spaces.Text(
            min_length=1, max_length=MAX_INSTRUCTION_LENGTH, charset=INSTRUCTION_CHARSET
        ),
    }
    for camera in extra_cameras:
        items[f"image_{camera}"] = spaces.Box(
            low=0, high=255, shape=(height, width, 3), dtype=np.uint8
        )
    if state is not None:
        items["state"] = state
    return spaces.Dict(items)


def checked_instruction(text, where: str = "instruction") -> str:
    """``text`` if it is a valid observation instruction (non-blank, at most
    :data:`MAX_INSTRUCTION_LENGTH` characters of :data:`INSTRUCTION_CHARSET`), else ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"{where} must be a string; got {type(text).__name__} {text!r}")
    if not text.strip():
        raise ValueError(f"{where} must not be empty or blank; got {text!r}")
    if len(text) > MAX_INSTRUCTION_LENGTH:
        raise ValueError(
            f"{where} has {len(text)} characters; at most {MAX_INSTRUCTION_LENGTH} are allowed"
        )
    bad = sorted(set(text) - INSTRUCTION_CHARSET)
    if bad:
        raise ValueError(f"{where} holds characters outside the instruction charset: {bad}")
    return text


def action_space(low: float | np.ndarray = -1.0, high: float | np.ndarray = 1.0) -> spaces.Box:
    """``Box(low, high, (7,), float32)``: the 7-DoF end-effector delta action."""
    low = np.broadcast_to(np.asarray(low, dtype=np.float32), (ACTION_DIM,)).copy()
    high = np.broadcast_to(np.asarray(high, dtype=np.float32), (ACTION_DIM,)).copy()
    return spaces.Box(low=low, high=high, shape=(ACTION_DIM,), dtype=np.float32)


def validate_action(action, space: spaces.Box) -> tuple[np.ndarray, bool]:
    """Check an action and clip it into ``space``.

    Returns:
        (float32 ``(7,)`` clipped action, whether clipping changed it).

    Raises:
        ValueError: wrong shape (the message gives the received shape) or NaN / inf values.
    """
    array = np.asarray(action, dtype=np.float32)
    if array.shape != space.shape:
        raise ValueError(f"action must have shape {space.shape}; received shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"action contains NaN or inf: {array.tolist()}")
    clipped = np.clip(array, space.low, space.high)
    return clipped, bool(np.any(clipped != array))


def check_resolution(height: int, width: int) -> None:
    """Reject resolutions that are not positive multiples of 8 (video codecs and patching need it)."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or value <= 0 or value % 8:
            raise ValueError(
                f"image {name} must be a positive multiple of 8 (e.g. one of {RESOLUTIONS}); got {value!r}"
            )
