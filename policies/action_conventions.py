"""Action conventions: a real VLA's actions in this env's units.

The envs take 7-D end-effector deltas in the sim controller's units: motion in [-1, 1] per env
step (5 Hz; one env step holds the action for 4 controller steps at 20 Hz) in the robot base
frame, gripper ``-1`` open and ``+1`` close. A policy trained on another dataset emits its
dataset's units; :func:`convert_action` maps them here, :class:`ActionConvention` wraps a policy.

Conventions (``CONVENTIONS``):

- ``identity``: the policy already speaks this env's units (our policies, OpenVLA-normalised
  checkpoints fine-tuned on our data).
- ``bridge``: BridgeV2 (and OpenVLA's ``bridge_orig`` un-normalisation): metres and radians per
  5 Hz step, gripper ``1`` open ``0`` closed (continuous in between). Motion is divided by what
  one unit of our action moves the end effector in one env step, measured on the sim's recorded
  episodes (``METRES_PER_UNIT``, ``RADIANS_PER_UNIT``; least squares of the recorded change of
  ``observation.state`` on the action: R^2 0.3-0.5 for position, where the controller lags and
  saturates, and 0.75-0.85 for rotation), then clipped to [-1, 1]. Axes are taken as aligned
  with the robot base frame, as both datasets give them.
- ``libero``: LIBERO's actions are the same robosuite OSC_POSE units and gripper sign, but per
  20 Hz controller step; this env holds an action for 4 of them, so motion is divided by 4 to
  move as far per action as in LIBERO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from policies.base import Policy, check_instruction, uses_image
from wm_env.errors import lookup

# One unit of this env's action moves the end effector about this far in one env step
# (recorded sim episodes, data/sim64_test: 3.5 / 5.2 / 4.2 cm in x / y / z, 0.26 / 0.19 / 0.25 rad)
METRES_PER_UNIT = 0.045
RADIANS_PER_UNIT = 0.23
CONTROL_STEPS_PER_ENV_STEP = 4


@dataclass(frozen=True)
class Convention:
    """How a dataset's action maps onto this env's: ``ours = clip(scale * theirs)`` for the six
    motion dims, and the gripper mapped by ``gripper`` (``"same"`` or ``"bridge"``)."""

    name: str
    position_scale: float
    rotation_scale: float
    gripper: str


CONVENTIONS: dict[str, Convention] = {
    "identity": Convention("identity", 1.0, 1.0, "same"),
    "bridge": Convention("bridge", 1.0 / METRES_PER_UNIT, 1.0 / RADIANS_PER_UNIT, "bridge"),
    "libero": Convention(
        "libero", 1.0 / CONTROL_STEPS_PER_ENV_STEP, 1.0 / CONTROL_STEPS_PER_ENV_STEP, "same"
    ),
}


def convert_action(action: Any, convention: str | Convention) -> np.ndarray:
    """A policy's action ``(7,)`` or chunk ``(k, 7)`` in ``convention``'s units -> this env's
    float32 action of the same shape."""
    if isinstance(convention, str):
        convention = lookup("action convention", convention, CONVENTIONS)
    array = np.asarray(action, dtype=np.float64)
    if array.shape[-1:] != (7,) or array.ndim not in (1, 2):
        raise ValueError(f"action must be (7,) or (k, 7); got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("action contains NaN or inf")
    out = array.copy()
    out[..., :3] = np.clip(array[..., :3] * convention.position_scale, -1.0, 1.0)
    out[..., 3:6] = np.clip(array[..., 3:6] * convention.rotation_scale, -1.0, 1.0)
    if convention.gripper == "bridge":  # 1 open .. 0 closed -> -1 open .. +1 close
        out[..., 6] = 1.0 - 2.0 * np.clip(array[..., 6], 0.0, 1.0)
    return out.astype(np.float32)


class ActionConvention:
    """A policy whose actions are converted from ``convention`` into this env's units."""

    def __init__(self, policy: Policy, convention: str) -> None:
        self.convention = lookup("action convention", convention, CONVENTIONS)
        self.policy = policy
        self.name = policy.name
        self.uses_image = uses_image(policy)

    def reset(self, instruction: str) -> None:
        self.policy.reset(check_instruction(instruction))

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        return convert_action(self.policy.act(obs), self.convention)
