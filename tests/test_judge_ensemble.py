"""Ensemble judge and agreement statistics (pairwise agreement, Cohen's and Fleiss' kappa)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from judges.base import Verdict, check_judge_input
from judges.ensemble import EnsembleJudge, agreement, cohen_kappa, combine, fleiss_kappa

FRAMES = np.zeros((3, 8, 8, 3), np.uint8)


class Fixed:
    """A judge that always gives the same verdict and counts its calls."""

    def __init__(self, name: str, success: bool | None, score: float) -> None:
        self.name, self.verdict, self.calls = name, Verdict(success, score, name), 0

    def judge(self, frames, instruction):
        check_judge_input(frames, instruction)
        self.calls += 1
        return self.verdict


def test_majority_and_mean_combine_the_verdicts_that_did_not_abstain():
    judges = [Fixed("a", True, 0.9), Fixed("b", False, 0.4), Fixed("c", True, 0.6)]
    ensemble = EnsembleJudge(judges)
    verdict = ensemble.judge(FRAMES, "lift the red cube")
    assert verdict.success is True and verdict.score == pytest.approx((0.9 + 0.4 + 0.6) / 3)
    assert [j.calls for j in judges] == [1, 1, 1] and set(ensemble.last_verdicts) == {"a", "b", "c"}
    assert ensemble.name == "ensemble(a,b,c)"
    mean = EnsembleJudge([Fixed("a", True, 0.55), Fixed("b", False, 0.2)], mode="mean")
    assert mean.judge(FRAMES, "x").success is False  # mean 0.375 < 0.5 although it is a 1-1 tie
    assert (
        EnsembleJudge([Fixed("a", True, 0.55), Fixed("b", False, 0.2)]).judge(FRAMES, "x").success
    )


def test_abstentions_are_left_out_and_named_and_all_abstaining_abstains():
    verdict = combine(
        {"a": Verdict.abstain("down"), "b": Verdict(False, 0.1), "c": Verdict(False, 0.3)}
    )
    assert verdict.success is False and verdict.score == pytest.approx(0.2)
    assert "abstained: a" in verdict.rationale
    nobody = combine({"a": Verdict.abstain("down"), "b": Verdict.abstain("no answer")})
    assert nobody.success is None and "all judges abstained (a, b)" in nobody.rationale


def test_ensemble_rejects_bad_configurations_and_input():
    with pytest.raises(ValueError, match="at least two"):
        EnsembleJudge([Fixed("a", True, 1.0)])
    with pytest.raises(ValueError, match="distinct names"):
        EnsembleJudge([Fixed("a", True, 1.0), Fixed("a", False, 0.0)])
    with pytest.raises(KeyError, match="did you mean 'majority'"):
        EnsembleJudge([Fixed("a", True, 1.0), Fixed("b", True, 1.0)], mode="majorty")
    ensemble = EnsembleJudge([Fixed("a", True, 1.0), Fixed("b", True, 1.0)])
    with pytest.raises(ValueError, match="uint8"):
        ensemble.judge(np.zeros((0, 8, 8, 3), np.uint8), "x")
    with pytest.raises(ValueError, match="instruction"):
        ensemble.judge(FRAMES, "")


def test_cohen_kappa_matches_a_hand_computed_case_and_is_nan_when_undefined():
    a = [True, True, False, False, True]
    b = [True, False, False, False, True]
    # p_o = 0.8; yes rates 0.6 and 0.4 -> p_e = 0.48; kappa = 0.32 / 0.52
    assert cohen_kappa(a, b) == pytest.approx(0.32 / 0.52)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa([True, False], [False, True]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa([True, True], [True, True]))  # chance agreement is 1
    assert math.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError, match="equal-length"):
        cohen_kappa([True], [True, False])


def test_fleiss_kappa_matches_a_hand_computed_case():
    labels = np.array([[1, 1, 1], [0, 0, 0], [1, 1, 0], [0, 0, 1]], bool)
    # P_i = 1, 1, 1/3, 1/3 -> P_bar = 2/3; category shares 0.5 / 0.5 -> P_e = 0.5
    assert fleiss_kappa(labels) == pytest.approx(1 / 3)
    assert fleiss_kappa(np.array([[1, 1], [0, 0], [1, 1]], bool)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="raters >= 2"):
        fleiss_kappa(np.ones((3, 1), bool))


def test_agreement_counts_abstentions_apart_from_no():
    V, A = Verdict, Verdict.abstain("down")
    stats = agreement(
        {
            "probe": [V(True, 1), V(True, 1), V(False, 0), V(False, 0), V(True, 1)],
            "vlm": [V(True, 1), V(False, 0), V(False, 0), A, V(True, 1)],
            "oracle": [V(True, 1), V(True, 1), V(False, 0), V(False, 0), V(False, 0)],
        }
    )
    assert stats["episodes"] == 5 and stats["abstained"] == {"probe": 0, "vlm": 1, "oracle": 0}
    pair = stats["pairs"]["probe|vlm"]
    assert pair["episodes"] == 4 and pair["agreement"] == pytest.approx(0.75)
    assert stats["pairs"]["probe|oracle"]["agreement"] == pytest.approx(0.8)
    assert stats["all_decided"] == 4
    table = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 0], [1, 1, 0]], bool)
    assert stats["fleiss_kappa"] == pytest.approx(fleiss_kappa(table))
    with pytest.raises(ValueError, match="a verdict per episode"):
        agreement({"a": [V(True, 1)], "b": []})
