"""Judge-corrected success rates: what a leaderboard's observed rate says about the true one.

A judge that calls a failed episode a success with rate FPR and a successful one a success with
rate TPR turns a true success rate ``p`` into an observed rate ``q = FPR + (TPR - FPR) p``. The
Rogan-Gladen estimator inverts it, ``p = (q - FPR) / (TPR - FPR)``, clipped to [0, 1]. The
correction is valid when the judge's errors do not depend on the policy (the same TPR and FPR
for every policy's episodes): a judge that is fooled more by one policy's frames than another's
biases the corrected rates too.

TPR and FPR are measured on world-model replays of held-out sim episodes (``wmgym judge
calibrate --save``), so they include the world model's errors, as a leaderboard in that world
does. A calibration holds for one judge (its weights or prompt, by SHA-256) on one world model
(its bundle, by SHA-256) and is refused for any other.

The interval propagates the uncertainty of ``q`` (the leaderboard's own episodes) and of TPR and
FPR (the calibration's episodes): Monte Carlo draws from their Jeffreys posteriors, each pushed
through the estimator, 2.5th and 97.5th percentiles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wm_env.errors import CorruptFileError, WmGymError

CALIBRATION_FILE = "calibration.json"  # beside a judge's weights: a list of calibrations
DRAWS = 20_000


class CalibrationMismatch(WmGymError, ValueError):
    """A calibration applied to another judge or another world model than it was measured on."""


@dataclass(frozen=True)
class JudgeCalibration:
    """A judge's error rates on one world model's replays of held-out episodes (counts)."""

    judge: str  # the judge's name
    judge_sha256: str  # its weights' (or prompt template's) SHA-256, as leaderboards record it
    bundle_sha256: str  # the world model whose replays it judged
    true_positives: int  # replays of successful episodes judged successful
    positives: int  # replays of successful episodes
    false_positives: int  # replays of failed episodes judged successful
    negatives: int  # replays of failed episodes
    source: str = ""  # where it was measured (dataset, episodes, date)

    def __post_init__(self) -> None:
        counts = (self.true_positives, self.positives, self.false_positives, self.negatives)
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
            raise ValueError(f"calibration counts must be integers >= 0; got {counts}")
        if self.true_positives > self.positives or self.false_positives > self.negatives:
            raise ValueError(f"calibration counts exceed their totals: {counts}")
        if not self.positives or not self.negatives:
            raise ValueError("a calibration needs successful and failed episodes")

    @property
    def tpr(self) -> float:
        return self.true_positives / self.positives

    @property
    def fpr(self) -> float:
        return self.false_positives / self.negatives

    def describe(self) -> str:
        """One line for a leaderboard's provenance column."""
        return (
            f"{self.judge} ({self.judge_sha256[:12]}) on bundle {self.bundle_sha256[:12]}: "
            f"TPR {self.tpr:.2f} of {self.positives}, FPR {self.fpr:.2f} of {self.negatives}"
            + (f"; {self.source}" if self.source else "")
        )

    def check_applies(
        self, judge_sha256: str, bundle_sha256: str, judge: str | None = None
    ) -> None:
        """Raise :class:`CalibrationMismatch` unless measured for this judge (weights, and name
        when given: a probe reading latents is another judge than the same probe reading
        pixels) and world model."""
        if judge is not None and judge != self.judge:
            raise CalibrationMismatch(
                f"the calibration was measured for judge {self.judge!r}, not {judge!r}"
            )
        if self.judge_sha256 != judge_sha256:
            raise CalibrationMismatch(
                f"the calibration was measured for judge {self.judge_sha256[:12]}, not "
                f"{judge_sha256[:12]} (another judge, or its weights changed)"
            )
        if self.bundle_sha256 != bundle_sha256:
            raise CalibrationMismatch(
                f"the calibration was measured on bundle {self.bundle_sha256[:12]}, not "
                f"{bundle_sha256[:12]}: calibrate the judge on this world model's replays"
            )


def corrected_point(observed: float | np.ndarray, calibration: JudgeCalibration) -> np.ndarray:
    """The Rogan-Gladen estimate of observed rate(s), clipped to [0, 1]; NaN where the judge
    carries no information (TPR <= FPR). Any shape in, the same shape out."""
    c = calibration
    if c.tpr <= c.fpr:
        return np.full(np.shape(observed), np.nan)
    return np.clip((np.asarray(observed, float) - c.fpr) / (c.tpr - c.fpr), 0.0, 1.0)


def corrected_rate(
    successes: int, episodes: int, calibration: JudgeCalibration, seed: int = 0
) -> tuple[float, float, float]:
    """(estimate, lo, hi): the Rogan-Gladen corrected success rate with its 95% interval.

    NaN when there are no episodes or the judge carries no information (TPR <= FPR).
    """
    if episodes < 1:
        return (np.nan, np.nan, np.nan)
    if calibration.tpr <= calibration.fpr:
        return (np.nan, np.nan, np.nan)
    estimate = float(corrected_point(successes / episodes, calibration))
    rng = np.random.default_rng(seed)
    c = calibration
    q_draw = rng.beta(successes + 0.5, episodes - successes + 0.5, DRAWS)
    tpr = rng.beta(c.true_positives + 0.5, c.positives - c.true_positives + 0.5, DRAWS)
    fpr = rng.beta(c.false_positives + 0.5, c.negatives - c.false_positives + 0.5, DRAWS)
    informative = tpr > fpr
    p = np.clip((q_draw - fpr)[informative] / (tpr - fpr)[informative], 0.0, 1.0)
    lo, hi = np.percentile(p, [2.5, 97.5])
    return (estimate, float(lo), float(hi))


# ---------------------------------------------------------------------- storage


def read_calibrations(path: str | Path) -> list[JudgeCalibration]:
    """The calibrations stored at ``path`` (a judge directory or its ``calibration.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CALIBRATION_FILE
    if not path.is_file():
        return []
    try:
        raw = json.loads(path.read_text())
        items = raw if isinstance(raw, list) else [raw]
        return [JudgeCalibration(**item) for item in items]
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise CorruptFileError(path, f"not a list of judge calibrations ({error})") from None


def save_calibration(directory: str | Path, calibration: JudgeCalibration) -> Path:
    """Store ``calibration`` in ``directory/calibration.json``, replacing the one for the same
    judge and bundle."""
    path = Path(directory) / CALIBRATION_FILE

    def key(c: JudgeCalibration) -> tuple[str, str, str]:
        return (c.judge, c.judge_sha256, c.bundle_sha256)

    kept = [c for c in read_calibrations(path) if key(c) != key(calibration)]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps([asdict(c) for c in [*kept, calibration]], indent=1))
    tmp.replace(path)
    return path


def find_calibration(
    source: str | Path | None, judge_sha256: str, bundle_sha256: str, judge: str | None = None
) -> tuple[JudgeCalibration | None, str]:
    """The calibration at ``source`` for this judge on this bundle, or (None, why not)."""
    if source is None:
        return None, "uncalibrated: the judge has no calibration"
    stored = read_calibrations(source)
    if not stored:
        return None, "uncalibrated: the judge has no calibration"
    for calibration in stored:
        try:
            calibration.check_applies(judge_sha256, bundle_sha256, judge)
        except CalibrationMismatch:
            continue
        return calibration, calibration.describe()
    return None, "uncalibrated: the judge's calibrations are for other bundles or weights"
