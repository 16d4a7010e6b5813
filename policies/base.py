"""The policy contract: one interface for every policy, in either world.

A policy is reset with the episode's instruction and then asked for actions on observations of
the shared observation space (``wm_env.spaces``): ``{"image": uint8 (H, W, 3), "instruction":
str}``. It returns one 7-DoF action ``(7,)`` (dx, dy, dz, droll, dpitch, dyaw, gripper) or a
chunk ``(k, 7)`` that the runner executes in order (see :class:`policies.wrappers.ChunkExecutor`).

A policy whose actions never depend on the image (random, open-loop plans) says so with
``uses_image = False``; a runner may then pass ``image=None`` and skip rendering that frame (the
world-model leaderboard skips decoding it).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from wm_env.spaces import ACTION_DIM


@runtime_checkable
class Policy(Protocol):
    """``reset(instruction)`` at the start of an episode, then ``act(obs) -> (7,) | (k, 7)``.

    ``name`` identifies the policy in results (leaderboard rows). An optional ``uses_image``
    attribute (default True, see :func:`uses_image`) says whether ``act`` reads ``obs["image"]``.
    """

    name: str

    def reset(self, instruction: str) -> None: ...

    def act(self, obs: dict[str, Any]) -> np.ndarray: ...


def check_instruction(instruction: Any) -> str:
    """Return ``instruction`` if it is a non-empty string, else raise ``ValueError``."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty string; got {instruction!r}")
    return instruction


def uses_image(policy: Any) -> bool:
    """Whether ``policy.act`` reads ``obs["image"]`` (policies say otherwise with
    ``uses_image = False``)."""
    return bool(getattr(policy, "uses_image", True))


def check_observation(obs: Any, image: bool = True) -> tuple[np.ndarray | None, str]:
    """Validate a policy's observation; return ``(image uint8 (H, W, 3), instruction)``.

    With ``image=False`` (policies that do not read it) the image may be None or absent, and
    is then returned as None.

    Raises:
        ValueError: no ``image`` key, an image that is not uint8 ``(H, W, 3)``, or an empty
            instruction.
    """
    if not isinstance(obs, dict) or ("image" not in obs and image):
        keys = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
        raise ValueError(f"observation must be a dict with an 'image'; got {keys}")
    if not image and obs.get("image") is None:
        return None, check_instruction(obs.get("instruction"))
    image = np.asarray(obs["image"])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"obs['image'] must be uint8 (H, W, 3); got {image.dtype} {image.shape}")
    return image, check_instruction(obs.get("instruction"))


def check_action(action: Any, name: str = "policy") -> np.ndarray:
    """Validate what a policy returned; return float32 ``(k, 7)`` (``k = 1`` for one action).

    Raises:
        ValueError: wrong shape, or NaN / inf values (never silently replaced by zeros).
    """
    action = np.asarray(action, dtype=np.float32)
    if action.ndim == 1:
        action = action[None]
    if action.ndim != 2 or action.shape[1] != ACTION_DIM or len(action) == 0:
        raise ValueError(
            f"{name} must return ({ACTION_DIM},) or (k, {ACTION_DIM}) actions; got {action.shape}"
        )
    if not np.isfinite(action).all():
        raise ValueError(f"{name} returned NaN or inf actions")
    return action
