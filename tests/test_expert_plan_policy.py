"""Expert-plan policies: replayed plans succeed in the sim, the quality knob changes them, caching."""

from __future__ import annotations

import numpy as np
import pytest

from policies.base import Policy, uses_image
from policies.expert_plan import ExpertPlanPolicy

OBS = {"image": np.zeros((64, 64, 3), np.uint8), "instruction": "lift the red cube"}


def test_replays_the_plan_then_holds():
    plan = np.zeros((3, 7), np.float32)
    plan[:, 0] = [0.1, 0.2, 0.3]
    plan[:, -1] = [-1.0, 1.0, 1.0]
    policy = ExpertPlanPolicy.from_plan(plan)
    assert isinstance(policy, Policy)
    policy.reset("lift the red cube")
    actions = np.stack([policy.act(OBS) for _ in range(5)])  # (5, 7)
    np.testing.assert_allclose(actions[:3], plan)
    np.testing.assert_allclose(actions[3:, :6], 0.0)  # past the plan: no motion
    np.testing.assert_allclose(actions[3:, 6], 1.0)  # ... and the gripper stays closed
    policy.reset("lift the red cube")
    np.testing.assert_allclose(policy.act(OBS), plan[0])


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="quality"):
        ExpertPlanPolicy(quality=1.5)
    with pytest.raises(ValueError, match="num_steps"):
        ExpertPlanPolicy(num_steps=0)
    with pytest.raises(ValueError, match="plan"):
        ExpertPlanPolicy.from_plan(np.zeros((4, 6)))
    with pytest.raises(ValueError, match="NaN"):
        ExpertPlanPolicy.from_plan(np.full((4, 7), np.nan))
    prototype = ExpertPlanPolicy(quality=0.5)
    prototype.reset("lift the red cube")
    with pytest.raises(ValueError, match="no plan"):
        prototype.act(OBS)
    policy = ExpertPlanPolicy.from_plan(np.zeros((2, 7)))
    assert not uses_image(policy)  # an open-loop plan: runners may leave the image out ...
    assert policy.act({"instruction": "lift the red cube"}).shape == (7,)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):  # ... but a malformed one is refused
        policy.act({"image": np.zeros((8, 8), np.uint8), "instruction": "lift the red cube"})
    with pytest.raises(ValueError, match="instruction"):
        policy.reset("  ")
    with pytest.raises(KeyError, match="did you mean 'lift'"):
        prototype.for_start("lfit", 0)


def test_cached_plans_are_reused_without_the_sim(tmp_path, monkeypatch):
    import policies.expert_plan as module

    calls = []

    def fake_plan(family, quality, num_steps, seed=None, start=None, expert_seed=None, env=None):
        calls.append((family, quality, seed, expert_seed))
        return np.full((num_steps, 7), quality, np.float32), f"lift the red cube {seed}"

    monkeypatch.setattr(module, "compute_plan", fake_plan)
    prototype = ExpertPlanPolicy(quality=0.7, num_steps=5, cache_dir=tmp_path)
    first = prototype.for_start("lift", 3)
    again = ExpertPlanPolicy(quality=0.7, num_steps=5, cache_dir=tmp_path).for_start("lift", 3)
    other = prototype.for_start("lift", 4)
    assert calls == [
        ("lift", 0.7, 3, 4),
        ("lift", 0.7, 4, 5),
    ]  # the second seed-3 call read the cache
    np.testing.assert_array_equal(first.plan, again.plan)
    assert again.instruction == "lift the red cube 3" and other.instruction.endswith("4")
    assert first.name == "expert_plan_q0.7" and first.quality == 0.7
    assert len(list(tmp_path.glob("lift-seed3-q0.7-n5-e4-v*.npz"))) == 1


@pytest.mark.sim
def test_plan_replayed_in_the_sim_succeeds_and_quality_changes_it(tmp_path, sim_env_factory):
    env = sim_env_factory("lift")
    steps = 20  # the expert has the cube up after about 16 steps
    policy = ExpertPlanPolicy.planned(
        "lift", seed=0, quality=1.0, num_steps=steps, cache_dir=tmp_path, env=env
    )
    assert policy.plan.shape == (steps, 7) and policy.plan.dtype == np.float32
    obs, info = env.reset(seed=0)
    assert obs["instruction"] == policy.instruction
    policy.reset(obs["instruction"])
    for _ in range(steps):
        obs, _, _, _, info = env.step(policy.act(obs))
    assert info["success"], "the quality-1 expert's plan should lift the cube"

    worse = ExpertPlanPolicy.planned(
        "lift", seed=0, quality=0.0, num_steps=8, cache_dir=tmp_path, env=env
    )
    assert np.abs(worse.plan - policy.plan[:8]).max() > 0.1  # action noise from the first step
    with pytest.raises(ValueError, match="not 'push'"):
        ExpertPlanPolicy.planned("push", seed=0, cache_dir=False, env=env)


@pytest.mark.sim
def test_expert_final_frame_shows_the_task_done(tmp_path, monkeypatch, sim_env_factory):
    from policies.expert_plan import expert_final_frame

    monkeypatch.setenv("WMGYM_PLAN_CACHE", str(tmp_path))
    goal = expert_final_frame("lift", 0, resolution=64, num_steps=20)
    assert goal.shape == (64, 64, 3) and goal.dtype == np.uint8
    assert np.array_equal(expert_final_frame("lift", 0, resolution=64, num_steps=20), goal)
    env = sim_env_factory("lift")  # the same episode, stepped by hand
    plan = ExpertPlanPolicy(quality=1.0, num_steps=20, cache_dir=tmp_path).for_start("lift", 0)
    obs, _ = env.reset(seed=0)
    start = obs["image"]
    for action in plan.plan:
        obs, _, _, _, info = env.step(action)
    assert info["success"] and np.array_equal(obs["image"], goal)
    assert np.abs(goal.astype(int) - start.astype(int)).mean() > 1.0  # the scene changed
    assert expert_final_frame("lift", 0, resolution=32, num_steps=20).shape == (32, 32, 3)
