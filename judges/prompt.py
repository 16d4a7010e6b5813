"""What a VLM judge is asked, on which frames, and how its answers become one verdict.

Shared by the local transformers judge (:mod:`judges.vlm`) and the OpenAI-compatible client
(:mod:`judges.openai_client`), so a served model is asked exactly what a local one is.

- Frames (WorldGym's recipe, ``RECIPE.md``): every ``stride``-th frame from an offset, always
  with the last frame (the outcome), at most ``max_frames`` of them, resized to ``image_size``.
  Sample ``k`` of ``n`` uses offset ``k % stride``, so the samples see different frames.
- Question: :attr:`PromptConfig.template` with ``{instruction}`` and ``{num_frames}`` filled in;
  it asks for a one-word Yes/No answer, whose next-token probabilities give the score
  ``p(yes) / (p(yes) + p(no))``. The template's SHA-256 (:attr:`PromptConfig.sha256`) goes
  into results as ``judge.prompt_hash``.
- Vote: each sample votes yes or no (or abstains); the majority wins, ties go to success (the
  higher score, as in WorldGym); the score is the mean ``p(yes)`` of the samples that answered.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from judges.base import Verdict, text_sha256

DEFAULT_TEMPLATE = (
    "These {num_frames} images are frames from a video of a robot arm at a table, in time "
    "order; the last image is the end of the video. The robot was asked to: {instruction}.\n"
    "Give the benefit of the doubt on object identity: colours and shapes in the video may be "
    "slightly off.\n"
    "Did the robot complete the task by the end of the video? Answer with one word: Yes or No."
)


@dataclass(frozen=True)
class PromptConfig:
    """The question a VLM judge asks and the frames it shows.

    Attributes:
        template: the question; ``{instruction}`` and ``{num_frames}`` are filled in.
        stride: show every ``stride``-th frame (WorldGym: every 3rd to every 20th).
        max_frames: at most this many frames (evenly thinned, the last always kept).
        image_size: frames are resized to ``image_size`` x ``image_size`` (0: as they are).
        yes_words, no_words: answers that count as yes / no (matched case-insensitively in text
            answers; their first tokens are read from the next-token probabilities).
    """

    template: str = DEFAULT_TEMPLATE
    stride: int = 4
    max_frames: int = 8
    image_size: int = 256
    yes_words: tuple[str, ...] = ("Yes", "yes")
    no_words: tuple[str, ...] = ("No", "no")

    def __post_init__(self) -> None:
        if "{instruction}" not in self.template:
            raise ValueError("the prompt template must contain '{instruction}'")
        try:
            self.template.format(instruction="x", num_frames=1)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"the prompt template may only use {{instruction}} and {{num_frames}}; {error!r}"
            ) from None
        if self.stride < 1 or self.max_frames < 1 or self.image_size < 0:
            raise ValueError(
                f"need stride >= 1, max_frames >= 1, image_size >= 0; got {self.stride}, {self.max_frames}, {self.image_size}"
            )
        if not self.yes_words or not self.no_words:
            raise ValueError("yes_words and no_words must not be empty")
        overlap = {w.lower() for w in self.yes_words} & {w.lower() for w in self.no_words}
        if overlap:
            raise ValueError(f"words counted as both yes and no: {sorted(overlap)}")

    @property
    def sha256(self) -> str:
        """SHA-256 of the template (what ``judge.prompt_hash`` records)."""
        return text_sha256(self.template)

    def render(self, instruction: str, num_frames: int) -> str:
        """The question for one episode."""
        return self.template.format(instruction=instruction.strip(), num_frames=num_frames)


def subsample_indices(num_frames: int, stride: int, offset: int, max_frames: int) -> np.ndarray:
    """Indices of the frames shown: ``offset, offset + stride, ...`` plus the last frame.

    More than ``max_frames`` of them are thinned evenly, keeping the first chosen and the last.

    Returns:
        int64 ``(k,)`` sorted, unique, ``1 <= k <= max_frames``.
    """
    if num_frames < 1:
        raise ValueError(f"need at least one frame; got {num_frames}")
    if stride < 1 or max_frames < 1 or offset < 0:
        raise ValueError(
            f"need stride >= 1, max_frames >= 1, offset >= 0; got {stride}, {max_frames}, {offset}"
        )
    chosen = np.union1d(np.arange(offset, num_frames, stride), [num_frames - 1]).astype(np.int64)
    if len(chosen) > max_frames:
        keep = np.unique(np.round(np.linspace(0, len(chosen) - 1, max_frames)).astype(np.int64))
        chosen = chosen[keep]
    return chosen


def resize_frames(frames: np.ndarray, size: int) -> list:
    """uint8 ``(k, H, W, 3)`` -> ``k`` PIL images of ``size`` x ``size`` (bicubic; 0 keeps the size)."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    if size:
        images = [im.resize((size, size), Image.Resampling.BICUBIC) for im in images]
    return images


def yes_no_from_text(text: str, config: PromptConfig) -> bool | None:
    """The first yes/no word in an answer (case-insensitive), or None when it has neither."""
    words = {w.lower(): True for w in config.yes_words} | {
        w.lower(): False for w in config.no_words
    }
    pattern = r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b"
    match = re.search(pattern, text.lower())
    return None if match is None else words[match.group(1)]


@dataclass(frozen=True)
class SampleAnswer:
    """One sample's answer: its vote (None: no yes/no), ``p(yes)`` (None if unknown), a note."""

    vote: bool | None
    p_yes: float | None
    note: str = ""


def majority_vote(answers: Sequence[SampleAnswer]) -> Verdict:
    """Combine samples: majority of the votes (ties to success); score = mean ``p(yes)``.

    Samples without a vote are left out; when none voted the verdict abstains with their notes.
    The score falls back to the share of yes votes when no sample had probabilities.
    """
    voted = [a for a in answers if a.vote is not None]
    if not voted:
        reasons = "; ".join(sorted({a.note for a in answers if a.note})) or "no answer"
        return Verdict.abstain(f"no sample answered yes or no ({reasons})")
    yes = sum(a.vote for a in voted)
    no = len(voted) - yes
    probs = [a.p_yes for a in voted if a.p_yes is not None]
    score = float(np.mean(probs)) if probs else yes / len(voted)
    success = yes >= no
    rationale = f"{yes} yes / {no} no of {len(answers)} samples"
    if len(voted) < len(answers):
        rationale += f" ({len(answers) - len(voted)} without a yes/no)"
    if probs:
        rationale += f"; mean p(yes) {score:.3f}"
    return Verdict(success, min(1.0, max(0.0, score)), rationale)
