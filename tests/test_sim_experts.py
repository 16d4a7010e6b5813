"""Scripted experts and their quality knob (wm_env.sim.experts), rollouts and open-loop plans
(wm_env.sim.rollout)."""

from __future__ import annotations

import numpy as np
import pytest

from wm_env.sim.experts import ExpertQuality, ScriptedExpert

EPISODE_SEEDS = range(100, 105)  # reset seeds; the expert's own draws use seed + 1


# ---------------------------------------------------------------------- quality knob (pure)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"noise_std": -0.1}, "noise_std"),
        ({"noise_std": float("nan")}, "noise_std"),
        ({"wrong_target_prob": 1.5}, "wrong_target_prob"),
        ({"early_release_prob": -0.01}, "early_release_prob"),
    ],
)
def test_expert_quality_rejects_invalid_values(kwargs, message):
    """Negative/NaN noise and probabilities outside [0, 1] raise ValueError naming the field."""
    with pytest.raises(ValueError, match=message):
        ExpertQuality(**kwargs)


@pytest.mark.parametrize("level", [-0.1, 1.01, float("nan")])
def test_quality_level_outside_unit_interval_is_rejected(level):
    """from_level only accepts levels in [0, 1]."""
    with pytest.raises(ValueError, match="quality level"):
        ExpertQuality.from_level(level)


def test_quality_level_grades_every_failure_mode():
    """Level 1 is the flawless expert; lowering the level raises every failure knob."""
    assert ExpertQuality.from_level(1.0) == ExpertQuality()
    levels = [ExpertQuality.from_level(x) for x in (1.0, 0.5, 0.0)]
    for field in ("noise_std", "wrong_target_prob", "early_release_prob"):
        values = [getattr(q, field) for q in levels]
        assert values[0] == 0.0 and values[0] < values[1] < values[2], field
        assert values[2] <= 1.0


def test_expert_must_be_reset_before_acting():
    """act() before reset() raises instead of returning a meaningless action."""
    with pytest.raises(RuntimeError, match="reset"):
        ScriptedExpert().act(None)


# ---------------------------------------------------------------------- experts in the sim
def _success_count(env, quality: ExpertQuality) -> tuple[int, list[bool]]:
    from wm_env.sim.rollout import run_expert

    outcomes = []
    for seed in EPISODE_SEEDS:
        obs, info = env.reset(seed=seed)
        rollout = run_expert(
            env, obs, info, quality, seed=seed + 1, num_steps=env.spec.max_episode_steps
        )
        assert len(rollout.actions) == env.spec.max_episode_steps
        assert np.all(np.abs(rollout.actions) <= 1.0)
        outcomes.append(rollout.success)
    return sum(outcomes), outcomes


@pytest.mark.sim
def test_success_is_false_at_reset(family_env):
    """No family's predicate already holds at the start of an episode."""
    for seed in EPISODE_SEEDS:
        _, info = family_env.reset(seed=seed)
        assert info["success"] is False, seed


@pytest.mark.sim
def test_expert_quality_spreads_success(family_env):
    """Quality 1.0 solves at least 4 of 5 seeded episodes; quality 0.0 at most 1 of 5."""
    good, outcomes = _success_count(family_env, ExpertQuality.from_level(1.0))
    assert good >= 4, outcomes
    bad, outcomes = _success_count(family_env, ExpertQuality.from_level(0.0))
    assert bad <= 1, outcomes


@pytest.mark.sim
def test_open_loop_plan_replays_the_closed_loop_expert(family_env):
    """open_loop_plan leaves the env's state as it was; replayed from the restored start, the
    plan equals the closed-loop expert's actions and ends with the same outcome and frame."""
    from wm_env.sim.rollout import open_loop_plan, run_expert

    env, sim = family_env, family_env.unwrapped
    quality, steps = ExpertQuality.from_level(1.0), env.spec.max_episode_steps
    env.reset(seed=EPISODE_SEEDS[0])
    start = sim.start_state()
    before = sim.physics_state()
    plan = open_loop_plan(env, quality, seed=1, num_steps=steps)
    np.testing.assert_array_equal(sim.physics_state(), before)
    assert plan.shape == (steps, 7) and plan.dtype == np.float32

    obs, info = env.reset(options={"start": start})
    rollout = run_expert(env, obs, info, quality, seed=1, num_steps=steps)
    np.testing.assert_array_equal(rollout.actions, plan)
    assert rollout.success

    obs, _ = env.reset(options={"start": start})
    for action in plan:
        obs, _, _, _, info = env.step(action)
    assert info["success"] == rollout.success
    np.testing.assert_array_equal(obs["image"], rollout.frames["image"][-1])


@pytest.mark.sim
def test_open_loop_plan_mid_episode_does_not_disturb_the_episode(sim_env_factory):
    """Planning mid-episode (the plan closes the gripper) leaves the episode exactly where it
    was, gripper command included: the next steps render the same frames as without planning."""
    from wm_env.sim.rollout import open_loop_plan

    env = sim_env_factory("lift")
    moves = np.random.default_rng(0).uniform(-0.5, 0.5, size=(8, 7)).astype(np.float32)
    moves[:, 6] = -1.0  # keep the gripper open

    env.reset(seed=21)
    for action in moves[:4]:
        env.step(action)
    expected = [env.step(action)[0]["image"] for action in moves[4:]]

    env.reset(seed=21)
    for action in moves[:4]:
        env.step(action)
    plan = open_loop_plan(env, ExpertQuality(), seed=0, num_steps=env.spec.max_episode_steps)
    assert np.any(plan[:, 6] > 0), "the plan should close the gripper (grasp)"
    got = [env.step(action)[0]["image"] for action in moves[4:]]
    for t, (want, image) in enumerate(zip(expected, got, strict=True)):
        np.testing.assert_array_equal(image, want, err_msg=f"step {t} after planning")
