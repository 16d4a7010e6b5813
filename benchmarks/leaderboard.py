"""Aggregate an episode log into CSV leaderboards (pandas).

``leaderboard.csv`` has one row per policy; ``leaderboard_long.csv`` one row per policy, task
(``all`` for the pooled row) and condition. Column meanings are in :data:`COLUMNS` and in the
README. Episodes that errored or whose judge abstained are counted apart and never as failures.
Robustness drop = clean success minus perturbed success, with a bootstrap interval that
resamples the shared starts (paired: the same task/seed/index in both conditions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.metrics import wilson_interval

CLEAN = "clean"
BOOTSTRAP_SAMPLES = 2000
PAIR_KEY = ["task", "seed", "index"]

COLUMNS = {
    "rank": "position by clean success (1 = best)",
    "policy": "policy name from the suite",
    "task": "task family, or 'all' pooled over tasks",
    "condition": "condition name from the suite ('clean' is the reference)",
    "episodes": "episodes with a verdict (errors and abstentions excluded)",
    "successes": "episodes judged successful",
    "success": "success rate = successes / episodes",
    "success_lo": "Wilson 95% interval, low end",
    "success_hi": "Wilson 95% interval, high end",
    "perturbed_success": "success pooled over the non-clean conditions",
    "drop": "robustness drop: clean success minus perturbed success",
    "drop_lo": "paired bootstrap 95% interval of the drop, low end",
    "drop_hi": "paired bootstrap 95% interval of the drop, high end",
    "errors": "episodes that could not run (policy server down...): not failures",
    "abstained": "episodes the judge could not decide",
    "ms_per_step": "mean wall milliseconds per env step",
    "success_calibrated": "clean success corrected for the judge's measured TPR and FPR "
    "(Rogan-Gladen), or 'uncalibrated' when the judge has no calibration for this world model",
    "success_calibrated_lo": "95% interval of the corrected success (episodes and calibration)",
    "success_calibrated_hi": "95% interval of the corrected success, high end",
    "calibration": "which calibration corrected it (judge, bundle, TPR, FPR and their counts)",
}
UNCALIBRATED = "uncalibrated"


def load_rows(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Episode rows -> a DataFrame with a boolean ``ok`` (has a verdict) column."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        raise ValueError("no episodes to aggregate")
    frame["ok"] = frame["error"].isna() & frame["success"].notna()
    frame["win"] = frame["success"].map(lambda v: v is True or v == 1).astype(bool) & frame["ok"]
    return frame


def summarize(group: pd.DataFrame) -> dict[str, Any]:
    """Success, its Wilson interval and counts for one group of episodes."""
    n = int(group["ok"].sum())
    k = int(group["win"].sum())
    lo, hi = wilson_interval(k, n)
    return {
        "episodes": n,
        "successes": k,
        "success": k / n if n else np.nan,
        "success_lo": lo,
        "success_hi": hi,
        "errors": int(group["error"].notna().sum()),
        "abstained": int((group["error"].isna() & group["success"].isna()).sum()),
        "ms_per_step": float(group["ms_per_step"].mean()),
    }


def paired_drop(
    clean: pd.DataFrame, perturbed: pd.DataFrame, rng: np.random.Generator
) -> tuple[float, float, float]:
    """(drop, lo, hi): clean minus perturbed success with a paired bootstrap 95% interval.

    Episodes pair on (task, seed, index); unpaired episodes are left out of the interval but
    the point estimate uses all of them.
    """
    a, b = clean[clean["ok"]], perturbed[perturbed["ok"]]
    if a.empty or b.empty:
        return (np.nan, np.nan, np.nan)
    drop = a["win"].mean() - b["win"].mean()
    pairs = (
        a.set_index(PAIR_KEY)["win"]
        .to_frame("clean")
        .join(b.set_index(PAIR_KEY)["win"].to_frame("perturbed"), how="inner")
    )
    if len(pairs) < 2:
        return (float(drop), np.nan, np.nan)
    diffs = (pairs["clean"].astype(float) - pairs["perturbed"].astype(float)).to_numpy()
    draws = rng.integers(0, len(diffs), size=(BOOTSTRAP_SAMPLES, len(diffs)))
    means = diffs[draws].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(drop), float(lo), float(hi))


def long_table(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per policy x task (and 'all') x condition, with the drop against clean."""
    rng = np.random.default_rng(seed)
    pooled = frame.assign(task="all")
    rows = []
    for (policy, task, condition), group in pd.concat([frame, pooled]).groupby(
        ["policy", "task", "condition"], sort=False
    ):
        row = {"policy": policy, "task": task, "condition": condition, **summarize(group)}
        if condition != CLEAN:
            selection = frame if task == "all" else frame[frame["task"] == task]
            clean = selection[(selection["policy"] == policy) & (selection["condition"] == CLEAN)]
            row["drop"], row["drop_lo"], row["drop_hi"] = paired_drop(clean, group, rng)
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("drop", "drop_lo", "drop_hi"):
        if column not in table:
            table[column] = np.nan
    return table.sort_values(["policy", "task", "condition"], kind="stable").reset_index(drop=True)


def policy_table(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per policy: clean success (Wilson), pooled perturbed success, drop (bootstrap)."""
    rng = np.random.default_rng(seed)
    rows = []
    for policy, group in frame.groupby("policy", sort=False):
        has_clean = (group["condition"] == CLEAN).any()
        clean = group[group["condition"] == CLEAN] if has_clean else group
        perturbed = group[group["condition"] != CLEAN]
        row = {"policy": policy, **summarize(clean)}
        row["errors"] = int(group["error"].notna().sum())
        row["abstained"] = int((group["error"].isna() & group["success"].isna()).sum())
        row["ms_per_step"] = float(group["ms_per_step"].mean())
        if has_clean and not perturbed.empty:
            ok = perturbed[perturbed["ok"]]
            row["perturbed_success"] = ok["win"].mean() if len(ok) else np.nan
            # pair each perturbed episode with the clean episode of the same start
            row["drop"], row["drop_lo"], row["drop_hi"] = paired_drop(clean, perturbed, rng)
        else:
            row.update(perturbed_success=np.nan, drop=np.nan, drop_lo=np.nan, drop_hi=np.nan)
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("success", ascending=False, kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def with_calibrated_success(table: pd.DataFrame, calibration, note: str) -> pd.DataFrame:
    """Add ``success_calibrated`` (+ interval) and ``calibration`` to a policy table.

    ``calibration`` is a :class:`judges.correction.JudgeCalibration` for the run's judge on its
    world model, ``"oracle"`` for the sim's exact predicate, or None: then the column says
    ``uncalibrated`` instead of a number, and ``note`` says why.
    """
    from judges.correction import corrected_rate

    table = table.copy()
    if calibration == "oracle":
        table["success_calibrated"] = table["success"]
        table["success_calibrated_lo"] = table["success_lo"]
        table["success_calibrated_hi"] = table["success_hi"]
    elif calibration is None:
        table["success_calibrated"] = UNCALIBRATED
        table["success_calibrated_lo"] = np.nan
        table["success_calibrated_hi"] = np.nan
    else:
        corrected = [
            corrected_rate(int(k), int(n), calibration)
            for k, n in zip(table["successes"], table["episodes"], strict=True)
        ]
        table["success_calibrated"] = [c[0] for c in corrected]
        table["success_calibrated_lo"] = [c[1] for c in corrected]
        table["success_calibrated_hi"] = [c[2] for c in corrected]
    table["calibration"] = note
    return table


def with_provenance(table: pd.DataFrame, provenance: dict[str, Any], editors: str) -> pd.DataFrame:
    """Append the provenance columns (same value on every row)."""
    table = table.copy()
    for name, value in {**provenance, "editors": editors}.items():
        table[name] = value
    return table


def write_leaderboards(
    rows: Sequence[dict[str, Any]],
    out_dir,
    provenance: dict[str, Any],
    editors: str = "",
    calibration=None,
    calibration_note: str = "uncalibrated: the judge has no calibration",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``leaderboard.csv`` and ``leaderboard_long.csv``; return both tables
    (``calibration``: see :func:`with_calibrated_success`)."""
    from pathlib import Path

    frame = load_rows(rows)
    main = with_calibrated_success(policy_table(frame), calibration, calibration_note)
    main = with_provenance(main, provenance, editors)
    long = with_provenance(long_table(frame), provenance, editors)
    out_dir = Path(out_dir)
    main.to_csv(out_dir / "leaderboard.csv", index=False, float_format="%.4f")
    long.to_csv(out_dir / "leaderboard_long.csv", index=False, float_format="%.4f")
    return main, long
