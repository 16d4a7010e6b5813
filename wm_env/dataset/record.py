"""The in-memory form of one recorded episode: what the collector hands to the writer.

An episode of ``T`` env steps has ``T + 1`` observations (the start frame and one after each
step) and ``T`` actions. On disk (LeRobot v3 layout) it becomes ``T + 1`` rows; the last row
carries the null action (zeros) and ``action_valid = False`` so that action statistics and
training clips never use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class EpisodeRecord:
    """One episode, ready to be written.

    Attributes:
        episode_index: global index of the episode in the dataset (0-based).
        frames: camera name -> uint8 frames ``(T + 1, H, W, 3)``. The main camera is ``"image"``.
        actions: float32 ``(T, 7)`` actions (dx, dy, dz, droll, dpitch, dyaw, gripper) in env units.
        states: float32 ``(T + 1, S)`` proprioceptive state after each observation.
        instruction: the language instruction of the episode.
        success: whether the episode ended in success (sim predicate).
        success_per_step: bool ``(T + 1,)``, the predicate after each observation.
        meta: JSON-serialisable extras stored per episode (family, expert quality, seed,
            layout, initial sim state, distractors, ...).
    """

    episode_index: int
    frames: dict[str, np.ndarray]
    actions: np.ndarray
    states: np.ndarray
    instruction: str
    success: bool
    success_per_step: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "image" not in self.frames:
            raise ValueError(
                f"frames must include the main camera 'image'; got {sorted(self.frames)}"
            )
        n_steps = len(self.actions)
        if self.actions.ndim != 2 or self.actions.shape[1] != 7:
            raise ValueError(f"actions must be (T, 7); got {self.actions.shape}")
        for name, video in self.frames.items():
            if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
                raise ValueError(
                    f"frames[{name!r}] must be uint8 (T+1, H, W, 3); got {video.dtype} {video.shape}"
                )
            if len(video) != n_steps + 1:
                raise ValueError(
                    f"frames[{name!r}] has {len(video)} frames for {n_steps} actions; expected {n_steps + 1}"
                )
        if len(self.states) != n_steps + 1:
            raise ValueError(
                f"states has {len(self.states)} rows for {n_steps} actions; expected {n_steps + 1}"
            )
        if len(self.success_per_step) != n_steps + 1:
            raise ValueError(
                f"success_per_step has {len(self.success_per_step)} entries; expected {n_steps + 1}"
            )
        if not self.instruction:
            raise ValueError("instruction must be a non-empty string")

    @property
    def num_steps(self) -> int:
        """Number of env steps ``T`` (one fewer than the number of frames)."""
        return len(self.actions)
