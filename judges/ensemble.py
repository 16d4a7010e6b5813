"""Several judges as one, and how far they agree.

:class:`EnsembleJudge` asks every member and combines the verdicts that did not abstain:
``majority`` (ties go to success, as in the VLM vote) or ``mean`` (mean score >= threshold). An
abstaining member is left out and named in the rationale; when all abstain, so does the
ensemble. Its score is the mean score of the members that answered.

Agreement over a set of episodes (:func:`agreement`): for every pair of judges, the share of
episodes both decided on which they agree and Cohen's kappa; over the episodes every judge
decided, Fleiss' kappa (chance-corrected agreement of all judges). Abstentions are counted per
judge and never treated as "no".
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from judges.base import Verdict, check_judge_input

MODES = ("majority", "mean")


class EnsembleJudge:
    """Majority (or mean score) of several judges; see the module docstring.

    Args:
        judges: the members (any :class:`judges.base.Judge`), at least two.
        mode: ``majority`` or ``mean``.
        threshold: success when the mean score reaches it (``mean`` mode).

    Attributes:
        name: ``ensemble(<member names>)``.
        prompt_hash: the members' prompt hashes joined by ``+`` (empty ones left out).
        last_verdicts: the members' verdicts on the most recent episode, by name.
    """

    def __init__(self, judges: Sequence[Any], mode: str = "majority", threshold: float = 0.5):
        from wm_env.errors import lookup

        lookup("ensemble mode", mode, dict.fromkeys(MODES))
        if len(judges) < 2:
            raise ValueError(f"an ensemble needs at least two judges; got {len(judges)}")
        names = [str(getattr(j, "name", type(j).__name__)) for j in judges]
        if len(set(names)) != len(names):
            raise ValueError(f"ensemble members need distinct names; got {names}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
        self.judges, self.names, self.mode, self.threshold = list(judges), names, mode, threshold
        self.name = f"ensemble({','.join(names)})"
        self.prompt_hash = "+".join(h for j in judges if (h := getattr(j, "prompt_hash", "")))
        self.last_verdicts: dict[str, Verdict] = {}

    def judge(self, frames: np.ndarray, instruction: str) -> Verdict:
        """Every member's verdict on ``frames`` ``(T, H, W, 3)``, combined."""
        frames = check_judge_input(frames, instruction)
        self.last_verdicts = {
            n: j.judge(frames, instruction) for n, j in zip(self.names, self.judges, strict=True)
        }
        return combine(self.last_verdicts, self.mode, self.threshold)


def combine(
    verdicts: Mapping[str, Verdict], mode: str = "majority", threshold: float = 0.5
) -> Verdict:
    """One verdict from several judges' verdicts on the same episode (abstentions left out)."""
    decided = {n: v for n, v in verdicts.items() if v.success is not None}
    abstained = sorted(set(verdicts) - set(decided))
    if not decided:
        return Verdict.abstain(f"all judges abstained ({', '.join(abstained)})")
    score = float(np.mean([v.score for v in decided.values()]))
    yes = sum(v.success for v in decided.values())
    if mode == "majority":
        success = yes >= len(decided) - yes
    else:
        success = score >= threshold
    rationale = f"{mode}: {yes} of {len(decided)} judges say success; mean score {score:.3f}"
    if abstained:
        rationale += f"; abstained: {', '.join(abstained)}"
    return Verdict(bool(success), score, rationale)


# ---------------------------------------------------------------------- agreement statistics
def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Cohen's kappa of two raters' yes/no labels on the same items (nan when undefined).

    ``(p_o - p_e) / (1 - p_e)`` with observed agreement ``p_o`` and chance agreement ``p_e``
    from each rater's own yes rate. Undefined (nan) without items or when ``p_e = 1`` (both
    raters gave one and the same label to everything).
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two equal-length 1-D label sequences; got {a.shape} and {b.shape}")
    if len(a) == 0:
        return float("nan")
    observed = float(np.mean(a == b))
    pa, pb = a.mean(), b.mean()
    chance = float(pa * pb + (1 - pa) * (1 - pb))
    return float("nan") if chance >= 1.0 else (observed - chance) / (1.0 - chance)


def fleiss_kappa(labels: np.ndarray) -> float:
    """Fleiss' kappa of yes/no labels ``(items, raters)`` (nan when undefined).

    Per item, the agreement among its ``n`` raters ``P_i = (sum_j n_ij^2 - n) / (n (n - 1))``;
    ``P_bar`` their mean, ``P_e = sum_j p_j^2`` from the overall category shares.
    """
    labels = np.asarray(labels, dtype=bool)
    if labels.ndim != 2 or labels.shape[1] < 2:
        raise ValueError(f"need labels (items, raters >= 2); got shape {labels.shape}")
    items, raters = labels.shape
    if items == 0:
        return float("nan")
    counts = np.stack([labels.sum(1), raters - labels.sum(1)], axis=1).astype(float)  # (I, 2)
    per_item = ((counts**2).sum(1) - raters) / (raters * (raters - 1))
    shares = counts.sum(0) / (items * raters)
    chance = float((shares**2).sum())
    return float("nan") if chance >= 1.0 else float((per_item.mean() - chance) / (1.0 - chance))


def agreement(verdicts: Mapping[str, Sequence[Verdict]]) -> dict[str, Any]:
    """Agreement of judges over the same episodes: ``{judge name: [verdict per episode]}``.

    Returns:
        ``episodes``; ``abstained`` {judge: count}; ``pairs`` {"a|b": {"episodes" both decided,
        "agreement" share, "cohen_kappa"}}; ``all_decided`` (episodes every judge decided) and
        ``fleiss_kappa`` over them.
    """
    names = list(verdicts)
    if len(names) < 2:
        raise ValueError(f"agreement needs at least two judges; got {names}")
    lengths = {len(v) for v in verdicts.values()}
    if len(lengths) != 1:
        raise ValueError(f"every judge needs a verdict per episode; got lengths {sorted(lengths)}")
    decided = {n: np.array([v.success is not None for v in verdicts[n]], bool) for n in names}
    labels = {n: np.array([bool(v.success) for v in verdicts[n]], bool) for n in names}
    pairs = {}
    for a, b in itertools.combinations(names, 2):
        both = decided[a] & decided[b]
        la, lb = labels[a][both], labels[b][both]
        pairs[f"{a}|{b}"] = {
            "episodes": int(both.sum()),
            "agreement": float(np.mean(la == lb)) if both.any() else float("nan"),
            "cohen_kappa": cohen_kappa(la, lb),
        }
    everyone = np.logical_and.reduce([decided[n] for n in names])
    table = np.stack([labels[n][everyone] for n in names], axis=1)  # (items, raters)
    return {
        "episodes": lengths.pop(),
        "abstained": {n: int((~decided[n]).sum()) for n in names},
        "pairs": pairs,
        "all_decided": int(everyone.sum()),
        "fleiss_kappa": fleiss_kappa(table),
    }
