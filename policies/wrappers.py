"""Policy wrappers that are policies too: chunk execution, action noise, recording.

They compose: ``RecordingPolicy(ActionNoise(ChunkExecutor(vla, execute=4), std=0.05, seed=0))``
records the noisy single actions that were actually executed.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from policies.base import Policy, check_action, check_instruction, check_observation, uses_image
from policies.simple import action_bounds
from wm_env.spaces import ACTION_DIM


class ChunkExecutor:
    """Ask the inner policy for a chunk ``(k, 7)`` and hand out one action ``(7,)`` per call.

    The inner policy is queried again once the chunk, or its first ``execute`` actions, are used
    up (``execute=None``: the whole chunk). A policy returning single actions ``(7,)`` is a chunk
    of one, queried every step. ``reset`` drops the unused rest of the chunk.
    """

    def __init__(self, policy: Policy, execute: int | None = None) -> None:
        if execute is not None and (
            isinstance(execute, bool) or int(execute) != execute or execute < 1
        ):
            raise ValueError(f"execute must be a positive integer or None; got {execute!r}")
        self.policy = policy
        self.execute = None if execute is None else int(execute)
        self.name = f"{policy.name}+chunk{'' if execute is None else self.execute}"
        self.uses_image = uses_image(policy)
        self._queue: deque[np.ndarray] = deque()

    def reset(self, instruction: str) -> None:
        """Reset the inner policy and drop any actions left from the previous chunk."""
        self._queue.clear()
        self.policy.reset(check_instruction(instruction))

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Return the next float32 ``(7,)`` action, querying the inner policy when needed."""
        check_observation(obs, image=self.uses_image)
        if not self._queue:
            chunk = check_action(self.policy.act(obs), self.policy.name)  # (k, 7)
            self._queue.extend(chunk[: self.execute])
        return self._queue.popleft()


class ActionNoise:
    """Add Gaussian noise ``N(0, std)`` to every action of the inner policy, clipped to bounds.

    ``std`` is a scalar or a per-dimension ``(7,)`` array (e.g. zero for the gripper). Chunks
    keep their shape; the noise comes from a generator seeded once at construction.
    """

    def __init__(
        self,
        policy: Policy,
        std: float | np.ndarray,
        seed: int | None = None,
        low: float | np.ndarray = -1.0,
        high: float | np.ndarray = 1.0,
    ) -> None:
        std = np.broadcast_to(np.asarray(std, np.float32), (ACTION_DIM,)).copy()
        if not np.isfinite(std).all() or (std < 0).any():
            raise ValueError(f"std must be finite and >= 0; got {std}")
        self.policy, self.std = policy, std
        self.low, self.high = action_bounds(low, high)
        self.rng = np.random.default_rng(seed)
        self.name = f"{policy.name}+noise"
        self.uses_image = uses_image(policy)

    def reset(self, instruction: str) -> None:
        """Reset the inner policy."""
        self.policy.reset(check_instruction(instruction))

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Return the inner action(s) plus noise: float32 ``(7,)`` or ``(k, 7)`` like the inner."""
        check_observation(obs, image=self.uses_image)
        raw = self.policy.act(obs)
        action = check_action(raw, self.policy.name)  # (k, 7)
        noisy = action + self.rng.normal(size=action.shape).astype(np.float32) * self.std
        noisy = np.clip(noisy, self.low, self.high).astype(np.float32)
        return noisy[0] if np.ndim(raw) == 1 else noisy


class RecordingPolicy:
    """Pass actions through and keep ``(image, instruction, action)`` of every call.

    ``arrays()`` returns them stacked; put it outermost (around a :class:`ChunkExecutor`) to
    record the single actions that were executed.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.name = policy.name
        self.images: list[np.ndarray] = []  # each uint8 (H, W, 3)
        self.instructions: list[str] = []
        self.actions: list[np.ndarray] = []  # each float32 (7,) or (k, 7), as returned
        self.episodes: list[int] = []  # episode counter (one per reset) of each step
        self._episode = -1

    def reset(self, instruction: str) -> None:
        """Reset the inner policy and start a new episode in the record."""
        self.policy.reset(check_instruction(instruction))
        self._episode += 1

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Query the inner policy and record the step."""
        image, instruction = check_observation(obs)
        raw = self.policy.act(obs)
        action = check_action(raw, self.policy.name)
        action = action[0] if np.ndim(raw) == 1 else action
        self.images.append(image.copy())
        self.instructions.append(instruction)
        self.actions.append(action)
        self.episodes.append(max(self._episode, 0))
        return action

    def __len__(self) -> int:
        return len(self.actions)

    def clear(self) -> None:
        """Forget everything recorded (the episode counter restarts too)."""
        self.images.clear()
        self.instructions.clear()
        self.actions.clear()
        self.episodes.clear()
        self._episode = -1

    def arrays(self) -> dict[str, np.ndarray]:
        """The record as arrays over the ``T`` recorded calls.

        Returns:
            ``image`` uint8 ``(T, H, W, 3)``, ``instruction`` str ``(T,)``, ``action`` float32
            ``(T, 7)`` (or ``(T, k, 7)`` when every call returned a chunk of ``k``), ``episode``
            int64 ``(T,)``.

        Raises:
            ValueError: nothing recorded, images of different shapes, or actions of different
                shapes (a mix of single actions and chunks of several lengths).
        """
        if not self.actions:
            raise ValueError("nothing recorded yet: call act() first")
        shapes = {image.shape for image in self.images}
        if len(shapes) > 1:
            raise ValueError(f"recorded images differ in shape ({sorted(shapes)}); cannot stack")
        action_shapes = {action.shape for action in self.actions}
        if len(action_shapes) > 1:
            raise ValueError(
                f"recorded actions differ in shape ({sorted(action_shapes)}); wrap the policy in "
                "a ChunkExecutor to record single actions"
            )
        return {
            "image": np.stack(self.images),
            "instruction": np.array(self.instructions, dtype=str),
            "action": np.stack(self.actions).astype(np.float32),
            "episode": np.array(self.episodes, dtype=np.int64),
        }
