"""Training clips over episodes loaded contiguously by ``LeRobotDataset.load_arrays``.

A clip is ``n = history + future`` frames spaced ``frame_skip`` env steps apart inside ONE
episode, starting at a global row ``s``: frames ``s, s + k, ..., s + (n - 1) k`` (``k`` =
frame_skip), plus the ``k`` raw env-rate actions between each pair of consecutive clip frames
(rows ``s + i k .. s + (i + 1) k - 1`` for pair ``i``). Those action rows all precede the
episode's last row, so the null action stored there is never used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


def _check_clip_shape(history: int, future: int, frame_skip: int) -> int:
    """Validate the clip geometry and return the number of rows one clip spans."""
    if history < 1 or future < 0 or frame_skip < 1:
        raise ValueError(
            f"need history >= 1, future >= 0, frame_skip >= 1; got {history}, {future}, {frame_skip}"
        )
    return (history + future - 1) * frame_skip + 1


def clip_starts(
    episode_lengths: np.ndarray, history: int, future: int, frame_skip: int
) -> np.ndarray:
    """Global start rows of every valid clip, episodes laid out back to back in the given order.

    Args:
        episode_lengths: int ``(E,)`` frames per episode.

    Returns:
        int64 ``(C,)`` sorted start rows; clip ``c`` covers rows
        ``starts[c] + arange(history + future) * frame_skip``, all inside one episode.
    """
    span = _check_clip_shape(history, future, frame_skip)
    lengths = np.asarray(episode_lengths, dtype=np.int64)  # (E,)
    episode_starts = np.cumsum(lengths) - lengths  # (E,)
    counts = np.maximum(lengths - span + 1, 0)  # (E,) clips per episode
    first_clip = np.cumsum(counts) - counts  # (E,) clip id of each episode's first clip
    within = np.arange(counts.sum(), dtype=np.int64) - np.repeat(first_clip, counts)  # (C,)
    return np.repeat(episode_starts, counts) + within


def gather_clips(
    arrays: Mapping[str, np.ndarray],
    starts: np.ndarray,
    history: int,
    future: int,
    frame_skip: int,
) -> dict[str, np.ndarray]:
    """Gather a batch of clips with numpy fancy indexing (no per-sample Python loop).

    Args:
        arrays: ``frames`` (N, H, W, 3), ``actions`` (N, D), ``episode_index`` (N,),
            ``task_index`` (N,) — as returned by ``LeRobotDataset.load_arrays``.
        starts: int ``(B,)`` clip start rows from :func:`clip_starts`.

    Returns:
        ``frames`` (B, n, H, W, 3); ``actions`` (B, n - 1, frame_skip, D), the env-rate actions
        between consecutive clip frames; ``episode_index`` and ``instruction_index`` (B,).
    """
    _check_clip_shape(history, future, frame_skip)
    n = history + future
    starts = np.asarray(starts, dtype=np.int64)  # (B,)
    frame_rows = starts[:, None] + np.arange(n) * frame_skip  # (B, n)
    action_rows = (
        starts[:, None, None]
        + (np.arange(n - 1) * frame_skip)[None, :, None]
        + np.arange(frame_skip)[None, None, :]
    )  # (B, n - 1, frame_skip)
    return {
        "frames": arrays["frames"][frame_rows],
        "actions": arrays["actions"][action_rows],
        "episode_index": arrays["episode_index"][starts],
        "instruction_index": arrays["task_index"][starts],
    }


@dataclass(frozen=True)
class ClipIndex:
    """All valid clips of a set of loaded episodes, gathered by clip id.

    Attributes:
        starts: int64 ``(C,)`` global start rows (see :func:`clip_starts`).
        history, future, frame_skip: the clip geometry.
    """

    starts: np.ndarray
    history: int
    future: int
    frame_skip: int

    @classmethod
    def build(
        cls, arrays: Mapping[str, np.ndarray], history: int, future: int, frame_skip: int
    ) -> ClipIndex:
        """Index the clips of ``arrays`` (needs its per-episode ``lengths``)."""
        return cls(
            clip_starts(arrays["lengths"], history, future, frame_skip), history, future, frame_skip
        )

    def __len__(self) -> int:
        return len(self.starts)

    def gather(
        self, arrays: Mapping[str, np.ndarray], clip_ids: np.ndarray
    ) -> dict[str, np.ndarray]:
        """:func:`gather_clips` for clip ids ``(B,)`` (indices into :attr:`starts`)."""
        return gather_clips(
            arrays, self.starts[clip_ids], self.history, self.future, self.frame_skip
        )
