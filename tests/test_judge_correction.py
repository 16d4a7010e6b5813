"""Judge-corrected success rates (judges/correction.py) and their leaderboard columns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.leaderboard import UNCALIBRATED, with_calibrated_success
from judges.correction import (
    CalibrationMismatch,
    JudgeCalibration,
    corrected_rate,
    find_calibration,
    read_calibrations,
    save_calibration,
)
from wm_env.errors import CorruptFileError


def calibration(tp=80, pos=100, fp=10, neg=100, judge="probe:p", sha="j" * 64, bundle="b" * 64):
    return JudgeCalibration(judge, sha, bundle, tp, pos, fp, neg, source="test")


def test_rogan_gladen_inverts_the_judges_errors():
    cal = calibration()  # TPR 0.8, FPR 0.1: a true rate p is observed as 0.1 + 0.7 p
    for p in (0.0, 0.25, 0.5, 1.0):
        observed = round((0.1 + 0.7 * p) * 1000)
        estimate, lo, hi = corrected_rate(observed, 1000, cal)
        assert estimate == pytest.approx(p, abs=2e-3) and lo <= estimate <= hi
    assert corrected_rate(2, 100, cal)[0] == 0.0  # below the false-positive floor: clipped
    assert corrected_rate(95, 100, cal)[0] == 1.0
    assert np.isnan(corrected_rate(0, 0, cal)[0])
    useless = calibration(tp=10, fp=10)  # TPR == FPR: the verdicts say nothing
    assert np.isnan(corrected_rate(50, 100, useless)[0])


def test_the_interval_carries_the_calibrations_own_uncertainty():
    small = calibration(tp=8, pos=10, fp=1, neg=10)  # same rates, ten times fewer episodes
    _, lo_big, hi_big = corrected_rate(450, 1000, calibration())
    _, lo_small, hi_small = corrected_rate(450, 1000, small)
    assert hi_small - lo_small > 2 * (hi_big - lo_big)
    assert lo_big < 0.5 < hi_big
    assert corrected_rate(450, 1000, small) == corrected_rate(450, 1000, small)  # seeded


def test_calibrations_are_stored_with_the_judge_and_refused_elsewhere(tmp_path):
    first, other_bundle = calibration(), calibration(bundle="c" * 64, tp=60)
    save_calibration(tmp_path, first)
    save_calibration(tmp_path, other_bundle)
    save_calibration(tmp_path, calibration(tp=70))  # replaces the first: same judge and bundle
    stored = read_calibrations(tmp_path)
    assert len(stored) == 2 and {c.true_positives for c in stored} == {60, 70}
    found, note = find_calibration(tmp_path, "j" * 64, "b" * 64, "probe:p")
    assert found.true_positives == 70 and "TPR 0.70 of 100" in note
    for judge_sha, bundle_sha, name in (("x" * 64, "b" * 64, "probe:p"), ("j" * 64, "d" * 64, "probe:p"),
                                        ("j" * 64, "b" * 64, "probe:p+latents")):  # fmt: skip
        found, note = find_calibration(tmp_path, judge_sha, bundle_sha, name)
        assert found is None and note.startswith("uncalibrated: the judge's calibrations are for")
    with pytest.raises(CalibrationMismatch, match="bundle"):
        first.check_applies("j" * 64, "d" * 64)
    with pytest.raises(CalibrationMismatch, match="judge"):
        first.check_applies("x" * 64, "b" * 64)
    assert find_calibration(tmp_path / "none", "j", "b") == (
        None,
        "uncalibrated: the judge has no calibration",
    )
    (tmp_path / "calibration.json").write_text(json.dumps([{"judge": "x"}]))
    with pytest.raises(CorruptFileError, match="judge calibrations"):
        read_calibrations(tmp_path)
    with pytest.raises(ValueError, match="exceed"):
        calibration(tp=101)
    with pytest.raises(ValueError, match="successful and failed"):
        calibration(tp=0, pos=0)


def test_leaderboard_columns_say_uncalibrated_instead_of_a_number():
    table = pd.DataFrame({"policy": ["a", "b"], "episodes": [100, 100], "successes": [45, 10],
                          "success": [0.45, 0.1], "success_lo": [0.35, 0.05],
                          "success_hi": [0.55, 0.17]})  # fmt: skip
    none = with_calibrated_success(table, None, "uncalibrated: the judge has no calibration")
    assert (none["success_calibrated"] == UNCALIBRATED).all()
    assert none["success_calibrated_lo"].isna().all() and "no calibration" in none["calibration"][0]
    oracle = with_calibrated_success(table, "oracle", "oracle")
    assert oracle["success_calibrated"].tolist() == [0.45, 0.1]
    corrected = with_calibrated_success(table, calibration(), calibration().describe())
    assert corrected["success_calibrated"].tolist() == pytest.approx([0.5, 0.0], abs=1e-9)
    assert (corrected["success_calibrated_lo"] <= corrected["success_calibrated"]).all()


def test_an_explicit_calibration_for_another_bundle_is_refused(tmp_path):
    from benchmarks.bench import LeaderboardConfig, run_calibration
    from benchmarks.suite import load_suite

    save_calibration(tmp_path, calibration())
    suite = load_suite(Path("benchmarks/suites/default.yaml"))
    provenance = {"judge": "probe:p", "judge_prompt_sha256": "j" * 64, "bundle_sha256": "z" * 64}
    config = LeaderboardConfig(calibration=tmp_path / "calibration.json")
    with pytest.raises(CalibrationMismatch, match="does not apply"):
        run_calibration(config, suite, provenance)
    matching = {**provenance, "bundle_sha256": "b" * 64}
    found, note = run_calibration(config, suite, matching)
    assert found.tpr == 0.8 and "FPR 0.10" in note
    assert (
        run_calibration(LeaderboardConfig(), suite, {**matching, "judge": "oracle"})[0] == "oracle"
    )
    with pytest.raises(FileNotFoundError):
        run_calibration(LeaderboardConfig(calibration=tmp_path / "nope.json"), suite, matching)
