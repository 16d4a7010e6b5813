"""Seeded instruction perturbations: paraphrases and unseen phrasings of task instructions.

The sim's families say things one way ("lift the red cube"); a policy that only works for that
exact string has memorised it. :func:`perturb_instruction` parses our template instructions
into slots (colors, direction) and re-renders them with other verbs, nouns and sentence frames:

- ``"paraphrase"``: close variants a robotics dataset could contain ("pick up the red block").
- ``"unseen"``: phrasings unlike the templates: questions, polite requests, goal statements
  ("could you get the red block up off the table?").

Colors and directions keep their meaning, so the task (and its success predicate) is the same.
An instruction no family produced (a user's) gets generic frames ("please <instruction>").
Every output uses only :data:`wm_env.spaces.INSTRUCTION_CHARSET` and is at most
:data:`wm_env.spaces.MAX_INSTRUCTION_LENGTH` characters.
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from wm_env.errors import lookup
from wm_env.spaces import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH

MODES = ("paraphrase", "unseen")

# ---------------------------------------------------------------------- word banks
NOUNS = {
    "paraphrase": ("cube", "block"),
    "unseen": ("cube", "block", "toy block"),
}
BIN_NOUNS = {"paraphrase": ("bin",), "unseen": ("bin", "container", "basket", "tray")}
# Directions are the robot's: "front" is away from it, "back" towards it.
DIRECTION_WORDS = {
    "paraphrase": {
        "left": ("to the left", "left", "leftward"),
        "right": ("to the right", "right", "rightward"),
        "front": ("forward", "to the front", "away from you"),
        "back": ("back", "backward", "backwards", "towards you"),
    },
    "unseen": {
        "left": ("to your left", "over to the left", "towards the left side"),
        "right": ("to your right", "over to the right", "towards the right side"),
        "front": ("away from the robot", "further away from you", "ahead"),
        "back": ("towards the robot", "closer to you", "back towards yourself"),
    },
}

# Sentence frames per family and mode. Slots: {verb} {c} {c2} {noun} {bin} {dir}.
FRAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "lift": {
        "paraphrase": (
            "{verb} the {c} {noun}",
            "{verb} the {c} {noun} off the table",
        ),
        "unseen": (
            "could you {verb} the {c} {noun}?",
            "please {verb} the {c} {noun} off the table",
            "I need the {c} {noun} up in the air",
            "grab the {c} {noun} and hold it above the table",
            "the {c} {noun} should end up off the table; {verb} it",
            "find the {c} {noun} and {verb} it",
            "get the {c} {noun} off the table, please",
            "your job: {verb} the {c} one",
        ),
    },
    "stack": {
        "paraphrase": (
            "{verb} the {c} {noun} on the {c2} {noun}",
            "{verb} the {c} {noun} on top of the {c2} {noun}",
            "{verb} the {c} {noun} onto the {c2} {noun}",
        ),
        "unseen": (
            "could you {verb} the {c} {noun} on top of the {c2} one?",
            "build a tower: the {c} {noun} on the {c2} {noun}",
            "the {c} {noun} goes on top of the {c2} {noun}",
            "pick up the {c} {noun} and set it down on the {c2} {noun}",
            "I want the {c} {noun} resting on the {c2} {noun}",
            "make a stack with the {c2} {noun} at the bottom and the {c} {noun} on top",
            "please {verb} the {c} {noun} onto the {c2} {noun}",
        ),
    },
    "push": {
        "paraphrase": (
            "{verb} the {c} {noun} {dir}",
            "{verb} the {c} {noun} {dir} on the table",
        ),
        "unseen": (
            "could you {verb} the {c} {noun} {dir}?",
            "nudge the {c} {noun} {dir} without lifting it",
            "the {c} {noun} needs to move {dir}; {verb} it",
            "give the {c} {noun} a push {dir}",
            "keep the {c} {noun} on the table and {verb} it {dir}",
            "please {verb} the {c} {noun} a few centimetres {dir}",
        ),
    },
    "place": {
        "paraphrase": (
            "{verb} the {c} {noun} into the {c2} {bin}",
            "{verb} the {c} {noun} in the {c2} {bin}",
        ),
        "unseen": (
            "could you {verb} the {c} {noun} in the {c2} {bin}?",
            "the {c} {noun} belongs in the {c2} {bin}",
            "pick up the {c} {noun} and drop it into the {c2} {bin}",
            "tidy up: the {c} {noun} goes into the {c2} {bin}",
            "I'd like the {c} {noun} inside the {c2} {bin}",
            "please {verb} the {c} {noun} into the {c2} {bin}",
        ),
    },
}
VERBS: dict[str, dict[str, tuple[str, ...]]] = {
    "lift": {"paraphrase": ("lift", "pick up", "raise", "lift up"), "unseen": ("lift", "hoist")},
    "stack": {"paraphrase": ("stack", "put", "place"), "unseen": ("stack", "put", "set")},
    "push": {"paraphrase": ("push", "slide", "shove"), "unseen": ("push", "slide", "shove")},
    "place": {"paraphrase": ("put", "place", "drop"), "unseen": ("put", "place", "drop")},
}
GENERIC_FRAMES = {
    "paraphrase": ("please {x}", "{x}, please", "now {x}", "{x} now"),
    "unseen": (
        "could you {x}?",
        "{x}, carefully",
        "your task is to {x}",
        "I need you to {x}",
        "go ahead and {x}",
        "try to {x}",
        "{x}. Thanks!",
    ),
}

# The families' templates (see wm_env.sim.tasks), as regular expressions.
_WORD = r"([a-z]+)"
PATTERNS = {
    "lift": re.compile(rf"lift the {_WORD} cube"),
    "stack": re.compile(rf"stack the {_WORD} cube on (?:top of )?the {_WORD} cube"),
    "push": re.compile(rf"push the {_WORD} cube to the (left|right|front|back)"),
    "place": re.compile(rf"put the {_WORD} cube into the {_WORD} bin"),
}


# ---------------------------------------------------------------------- parsing, rendering
def parse_instruction(text: str) -> tuple[str, dict[str, str]] | None:
    """``(family, slots)`` of one of our template instructions, or ``None`` for any other text.

    >>> parse_instruction("push the red cube to the left")
    ('push', {'c': 'red', 'dir': 'left'})
    """
    clean = " ".join(text.strip().rstrip(".!").lower().split())
    for family, pattern in PATTERNS.items():
        match = pattern.fullmatch(clean)
        if match:
            names = {"lift": ("c",), "push": ("c", "dir")}.get(family, ("c", "c2"))
            return family, dict(zip(names, match.groups(), strict=True))
    return None


def variants_by_frame(text: str, mode: str = "paraphrase") -> dict[str, list[str]]:
    """The perturbations of ``text`` in ``mode``, grouped by sentence frame (each list sorted;
    ``text`` itself and variants longer than ``MAX_INSTRUCTION_LENGTH`` left out)."""
    lookup("instruction perturbation mode", mode, {m: m for m in MODES})
    _check_charset(text)
    parsed = parse_instruction(text)
    groups: dict[str, set[str]] = {}
    if parsed is None:
        body = _generic_body(text)
        for frame in GENERIC_FRAMES[mode]:
            groups[frame] = {frame.format(x=body)}
    else:
        family, slots = parsed
        directions = DIRECTION_WORDS[mode].get(slots.pop("dir", ""), ("",))
        for frame in FRAMES[family][mode]:
            groups[frame] = {
                frame.format(verb=verb, noun=noun, bin=bin_noun, dir=direction, **slots)
                for verb, noun, bin_noun, direction in itertools.product(
                    VERBS[family][mode], NOUNS[mode], BIN_NOUNS[mode], directions
                )
            }
    out = {}
    for frame, variants in groups.items():
        variants = {_capitalise(v) if v.endswith("?") else v for v in variants} - {text}
        variants = sorted(v for v in variants if len(v) <= MAX_INSTRUCTION_LENGTH)
        if variants:
            out[frame] = variants
    return out


def instruction_variants(text: str, mode: str = "paraphrase") -> list[str]:
    """Every perturbation of ``text`` in ``mode`` (sorted, without ``text`` itself)."""
    return sorted({v for group in variants_by_frame(text, mode).values() for v in group})


def perturb_instruction(text: str, rng: np.random.Generator, mode: str = "paraphrase") -> str:
    """One perturbation of ``text`` drawn with ``rng`` (``mode``: ``paraphrase`` | ``unseen``).

    A sentence frame is drawn uniformly, then its verb/noun/direction words. Returns ``text``
    unchanged only when no variant fits in ``MAX_INSTRUCTION_LENGTH``.

    Raises:
        ValueError: ``text`` is empty or has characters outside ``INSTRUCTION_CHARSET``.
        UnknownNameError: unknown mode (with "did you mean").
    """
    groups = list(variants_by_frame(text, mode).values())
    if not groups:
        return text
    group = groups[int(rng.integers(len(groups)))]
    return group[int(rng.integers(len(group)))]


def _check_charset(text: str) -> None:
    if not text or not text.strip():
        raise ValueError("cannot perturb an empty instruction")
    bad = sorted(set(text) - INSTRUCTION_CHARSET)
    if bad:
        raise ValueError(f"instruction {text!r} has characters outside the charset: {bad}")


def _generic_body(text: str) -> str:
    """The instruction as the middle of a sentence: no final punctuation, lower-case start."""
    body = text.strip().rstrip(".!")
    if len(body) > 1 and body[0].isupper() and not body[1].isupper():
        body = body[0].lower() + body[1:]
    return body


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]
