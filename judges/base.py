"""The judge contract: frames of an episode and its instruction in, a verdict out.

Every judge (VLM, probe, sim oracle, ensemble) implements :class:`Judge`. Verdicts may abstain
(``success=None``) when a judge cannot decide (an endpoint that is down, an answer without a
yes/no): an abstention is recorded as such, never as a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Verdict:
    """A judge's decision on one episode.

    Attributes:
        success: True / False, or None when the judge abstains.
        score: the judge's confidence that the episode succeeded, in [0, 1].
        rationale: a short explanation (or the error that made it abstain).
    """

    success: bool | None
    score: float
    rationale: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score must be in [0, 1]; got {self.score}")


@runtime_checkable
class Judge(Protocol):
    """``judge(frames uint8 (T, H, W, 3), instruction) -> Verdict``; ``name`` identifies it in results."""

    name: str

    def judge(self, frames: np.ndarray, instruction: str) -> Verdict: ...


def check_judge_input(frames, instruction: str) -> np.ndarray:
    """Validate a judge's input; return frames as uint8 ``(T, H, W, 3)``."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(
            f"frames must be uint8 (T, H, W, 3) with T >= 1; got {frames.dtype} {frames.shape}"
        )
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("instruction must be a non-empty string")
    return frames
