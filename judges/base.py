"""The judge contract: frames of an episode and its instruction in, a verdict out.

Every judge (VLM, probe, sim oracle, ensemble) implements :class:`Judge`. Verdicts may abstain
(``success=None``) when a judge cannot decide (an endpoint that is down, an answer without a
yes/no): an abstention is recorded as such, never as a failure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from wm_env.errors import WmGymError

ABSTAIN_SCORE = 0.5  # the score of a verdict that says nothing either way


class JudgeError(WmGymError, RuntimeError):
    """A judge could not reach a verdict and was configured to raise rather than abstain."""


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

    @classmethod
    def abstain(cls, reason: str) -> Verdict:
        """An abstention (``success=None``, score 0.5) recording why the judge could not decide."""
        return cls(None, ABSTAIN_SCORE, reason)

    @property
    def abstained(self) -> bool:
        return self.success is None


@runtime_checkable
class Judge(Protocol):
    """``judge(frames uint8 (T, H, W, 3), instruction) -> Verdict``; ``name`` identifies it in results.

    Judges that ask a model a question also have ``prompt_hash`` (SHA-256 of the prompt template),
    which results record next to the judge's name.
    """

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
    check_instruction(instruction)
    return frames


def check_instruction(instruction: str) -> None:
    """Raise ``ValueError`` unless ``instruction`` is a non-empty string."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("instruction must be a non-empty string")


def text_sha256(text: str) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes (e.g. a prompt template, for results)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def describe_judge(judge: Any) -> dict[str, Any]:
    """What results record about a judge: its name, its prompt hash (if any) and its kind."""
    return {
        "name": str(getattr(judge, "name", type(judge).__name__)),
        "kind": type(judge).__name__,
        "prompt_hash": str(getattr(judge, "prompt_hash", "") or ""),
    }
