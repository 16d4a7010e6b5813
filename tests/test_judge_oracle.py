"""The oracle judge: the sim's success predicate from a live env, recorded flags or final info."""

from __future__ import annotations

import numpy as np
import pytest

from judges.base import Judge
from judges.oracle import OracleJudge

FRAMES = np.zeros((4, 8, 8, 3), np.uint8)


def test_recorded_flags_answer_the_predicate_at_the_last_frame_judged():
    flags = np.array([False, False, True, True, False])  # succeeded at frame 2, undone at 4
    judge = OracleJudge.from_flags(flags)
    assert isinstance(judge, Judge) and judge.name == "oracle"
    assert [judge.judge(FRAMES[:1].repeat(t, 0), "x").success for t in range(1, 6)] == list(flags)
    verdict = judge.judge(np.zeros((3, 8, 8, 3), np.uint8), "lift the red cube")
    assert verdict.score == 1.0 and "predicate" in verdict.rationale
    with pytest.raises(ValueError, match="6 frames but"):
        judge.judge(np.zeros((6, 8, 8, 3), np.uint8), "x")
    with pytest.raises(ValueError, match="non-empty"):
        OracleJudge.from_flags([])


def test_final_info_gives_its_success_and_bad_input_is_refused():
    assert OracleJudge.from_info({"success": True}).judge(FRAMES, "x").success is True
    assert OracleJudge.from_info({"success": np.bool_(False)}).judge(FRAMES, "x").score == 0.0
    with pytest.raises(ValueError, match="no 'success'"):
        OracleJudge.from_info({"action_clipped": False})
    with pytest.raises(ValueError, match="uint8"):
        OracleJudge.from_info({"success": True}).judge(FRAMES.astype(np.float32), "x")
    with pytest.raises(ValueError, match="instruction"):
        OracleJudge.from_info({"success": True}).judge(FRAMES, " ")
    with pytest.raises(ValueError, match="not a tabletop sim env"):
        OracleJudge.for_env(object())


@pytest.mark.sim
def test_oracle_reads_the_live_sim_predicate_inside_the_judge_wrapper(sim_env_factory):
    from wm_env.sim.experts import ExpertQuality
    from wm_env.sim.rollout import run_expert
    from wm_env.wrappers import JudgeWrapper

    env = sim_env_factory("lift")
    judge = OracleJudge.for_env(env)
    obs, info = env.reset(seed=0)
    assert judge.judge(obs["image"], obs["instruction"]).success is False
    rollout = run_expert(env, obs, info, ExpertQuality.from_level(1.0), seed=0, num_steps=25)
    assert rollout.success  # the quality-1 expert lifts the cube on this seed
    assert judge.judge(rollout.frames["image"], rollout.instruction).success is True
    recorded = OracleJudge.from_flags(rollout.success_per_step)
    assert recorded.judge(rollout.frames["image"], rollout.instruction).success is True

    wrapped = JudgeWrapper(env, OracleJudge.for_env(env), every=1)
    obs, _ = wrapped.reset(seed=0)
    _, reward, terminated, _, info = wrapped.step(np.zeros(7, np.float32))
    assert info["verdict"].success is info["success"] is False and reward == 0.0
