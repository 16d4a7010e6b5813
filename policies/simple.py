"""Baseline policies with no model: uniform random actions and the do-nothing action."""

from __future__ import annotations

from typing import Any

import numpy as np

from policies.base import check_instruction, check_observation
from wm_env.spaces import ACTION_DIM


def action_bounds(
    low: float | np.ndarray, high: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast ``low``/``high`` to float32 ``(7,)`` and check ``low <= high`` (finite)."""
    low = np.broadcast_to(np.asarray(low, np.float32), (ACTION_DIM,)).copy()
    high = np.broadcast_to(np.asarray(high, np.float32), (ACTION_DIM,)).copy()
    if not (np.isfinite(low).all() and np.isfinite(high).all()) or (low > high).any():
        raise ValueError(f"action bounds need finite low <= high; got low={low}, high={high}")
    return low, high


class RandomPolicy:
    """Actions drawn uniformly in ``[low, high]`` (per dimension) from a seeded generator.

    The generator is seeded once at construction, so two policies with the same seed give the
    same action sequence; ``reset`` does not reseed (successive episodes differ).
    """

    name = "random"
    uses_image = False

    def __init__(
        self,
        seed: int | None = None,
        low: float | np.ndarray = -1.0,
        high: float | np.ndarray = 1.0,
    ) -> None:
        self.low, self.high = action_bounds(low, high)
        self.rng = np.random.default_rng(seed)

    def reset(self, instruction: str) -> None:
        """Start an episode (the instruction is checked and otherwise ignored)."""
        check_instruction(instruction)

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Return float32 ``(7,)`` uniform in the bounds."""
        check_observation(obs, image=False)
        return self.rng.uniform(self.low, self.high).astype(np.float32)


class ZeroPolicy:
    """The do-nothing action: zero end-effector motion with the gripper open (-1)."""

    name = "zero"
    uses_image = False

    def reset(self, instruction: str) -> None:
        """Start an episode (the instruction is checked and otherwise ignored)."""
        check_instruction(instruction)

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Return float32 ``(7,)``: six zeros and gripper -1 (open)."""
        check_observation(obs, image=False)
        action = np.zeros(ACTION_DIM, np.float32)
        action[-1] = -1.0
        return action
