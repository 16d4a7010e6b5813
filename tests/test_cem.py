"""The CEM planner (policies/cem.py), world-model planning, the MPC policy and controllability.

The planner is tested on analytic costs; everything that needs a world model uses the tiny
moving-blob bundle of conftest.py (``tiny_bundle``: the blob moves by ``4 * (dx, dy)`` px a
step; the tiny model learns part of that), never models/default.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from policies.base import Policy
from policies.cem import (
    CEMConfig,
    CEMPolicy,
    cem_plan,
    cem_plan_batch,
    episode_goal,
    latent_distance,
    plan_in_world_model,
    rollout_costs,
    start_goal,
)
from wm_env.errors import UnknownNameError
from wm_env.world_model import WorldModel

# The blob data only ever moves dx, dy (the other dims are constant 0, so the tiny model's action
# normalisation blows them up): model-based tests search those two.
MOVING = (0, 1)
TARGET = np.linspace(-0.6, 0.6, 21).reshape(3, 7)  # (H=3, 7) inside the bounds


def quadratic(target: np.ndarray):
    """Cost ``sum((a - target)^2)`` over a sequence, for a batch ``(S, H, 7)``."""
    return lambda actions: ((actions - target) ** 2).sum(axis=(-2, -1))


class Recorder:
    """Wraps a cost function and keeps every batch of samples and costs it saw."""

    def __init__(self, fn) -> None:
        self.fn, self.samples, self.costs = fn, [], []

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        costs = self.fn(actions)
        self.samples.append(actions.copy())
        self.costs.append(np.asarray(costs))
        return costs


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"samples": 0}, "samples"),
        ({"elites": 0}, "elites"),
        ({"samples": 8, "elites": 9}, "elites"),
        ({"iterations": 0}, "iterations"),
        ({"horizon": 0}, "horizon"),
        ({"std": 0.0}, "std"),
        ({"std": -1.0}, "std"),
        ({"bounds": (1.0, -1.0)}, "bounds"),
        ({"bounds": (0.5, 0.5)}, "bounds"),
        ({"bounds": (-1.0, 0.0, 1.0)}, "bounds"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"dims": ()}, "dims"),
        ({"dims": (0, 7)}, "dims"),
        ({"dims": (1, 1)}, "dims"),
    ],
)
def test_invalid_config_is_rejected_when_built(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        CEMConfig(**kwargs)


def test_unknown_cost_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="did you mean 'cosine'"):
        CEMConfig(cost="cosin")
    CEMConfig(cost="l1", elites=64, samples=64, momentum=0.9)  # valid edge values build


# ---------------------------------------------------------------------- the planner


def test_finds_the_minimum_of_a_quadratic():
    config = CEMConfig(samples=200, elites=20, iterations=12, horizon=3, std=1.0)
    best, info = cem_plan(quadratic(TARGET), config, rng=0)
    assert best.shape == (3, 7) and best.dtype == np.float32
    assert np.abs(best - TARGET).max() < 0.1
    assert info["best_cost"] == pytest.approx(((best - TARGET) ** 2).sum(), rel=1e-5)
    assert info["iteration_best"][-1] < info["iteration_best"][0] / 10  # it converged
    assert info["evaluations"] == 200 * 12


def test_samples_stay_in_bounds_and_a_target_outside_is_clipped():
    target = np.full((2, 7), 3.0)
    config = CEMConfig(samples=128, elites=16, iterations=15, horizon=2, bounds=(-0.5, 0.5))
    recorder = Recorder(quadratic(target))
    best, _ = cem_plan(recorder, config, rng=1)
    seen = np.concatenate(recorder.samples)
    assert seen.min() >= -0.5 and seen.max() <= 0.5
    assert np.allclose(best, 0.5, atol=0.1)


def test_returns_the_best_sample_seen_with_all_samples_elite():
    """elites == samples: the refit averages every sample (the mean barely moves), yet the
    returned sequence is the cheapest one ever evaluated, over all iterations."""
    config = CEMConfig(samples=16, elites=16, iterations=4, horizon=3)
    recorder = Recorder(quadratic(TARGET))
    best, info = cem_plan(recorder, config, rng=2)
    seen, costs = np.concatenate(recorder.samples), np.concatenate(recorder.costs)
    assert np.array_equal(best, seen[costs.argmin()])
    assert info["best_cost"] == costs.min()
    # the refit mean is the average of the last iteration's samples
    assert np.allclose(info["mean"], recorder.samples[-1].mean(0), atol=1e-6)


def test_refit_with_momentum_blends_old_and_elite_statistics():
    config = CEMConfig(samples=32, elites=4, iterations=1, horizon=2, std=0.7, momentum=0.25)
    init = np.full((2, 7), 0.2)
    recorder = Recorder(quadratic(TARGET[:2]))
    _, info = cem_plan(recorder, config, rng=3, init_mean=init)
    samples, costs = recorder.samples[0], recorder.costs[0]
    elites = samples[np.argsort(costs, kind="stable")[:4]]
    assert np.allclose(info["mean"], 0.25 * init + 0.75 * elites.mean(0), atol=1e-6)
    assert np.allclose(info["std"], 0.25 * 0.7 + 0.75 * elites.std(0), atol=1e-6)


def test_dimensions_not_searched_keep_the_initial_mean():
    config = CEMConfig(samples=64, elites=8, iterations=8, horizon=3, dims=(0, 6))
    init = np.full((3, 7), -0.25)
    recorder = Recorder(quadratic(TARGET))
    best, _ = cem_plan(recorder, config, rng=4, init_mean=init)
    seen = np.concatenate(recorder.samples)
    assert (seen[..., 1:6] == np.float32(-0.25)).all()
    assert np.abs(best[:, [0, 6]] - TARGET[:, [0, 6]]).max() < 0.1


def test_same_seed_same_plan_other_seed_other_plan():
    config = CEMConfig(samples=32, elites=4, iterations=3, horizon=3)
    a, _ = cem_plan(quadratic(TARGET), config, rng=7)
    b, _ = cem_plan(quadratic(TARGET), config, rng=np.random.default_rng(7))
    c, _ = cem_plan(quadratic(TARGET), config, rng=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_batched_problems_are_solved_independently():
    targets = np.stack([TARGET, -TARGET, np.zeros_like(TARGET)])  # (P=3, H, 7)
    config = CEMConfig(samples=200, elites=20, iterations=12, horizon=3)
    calls = []

    def cost(actions):  # (P, S, H, 7) -> (P, S), one call per iteration
        calls.append(actions.shape)
        return ((actions - targets[:, None]) ** 2).sum(axis=(-2, -1))

    best, info = cem_plan_batch(cost, config, rng=0, problems=3)
    assert best.shape == (3, 3, 7) and info["best_cost"].shape == (3,)
    assert np.abs(best - targets).max() < 0.1
    assert calls == [(3, 200, 3, 7)] * 12


def test_bad_cost_functions_and_init_means_raise():
    config = CEMConfig(samples=8, elites=2, iterations=1, horizon=2)
    with pytest.raises(ValueError, match=r"\(8,\) costs; got \(7,\)"):
        cem_plan(lambda a: np.zeros(7), config, rng=0)
    with pytest.raises(ValueError, match="NaN"):
        cem_plan(lambda a: np.full(len(a), np.nan), config, rng=0)
    with pytest.raises(ValueError, match="init_mean"):
        cem_plan(quadratic(TARGET[:2]), config, rng=0, init_mean=np.zeros((3, 7)))
    # torch costs are accepted
    best, _ = cem_plan(lambda a: torch.as_tensor(a).square().sum((-2, -1)), config, rng=0)
    assert best.shape == (2, 7)


def test_latent_distances():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[2.0, 4.0], [6.0, 8.0]]])  # (2, 2, 2)
    goal = torch.ones(2, 2, 2)
    assert torch.allclose(latent_distance(pred, goal, "l1"), torch.tensor([1.5, 4.0]))
    l2 = torch.tensor([np.sqrt((0 + 1 + 4 + 9) / 4), np.sqrt((1 + 9 + 25 + 49) / 4)]).float()
    assert torch.allclose(latent_distance(pred, goal, "l2"), l2)
    cosine = latent_distance(pred, pred[:1].expand(2, 2, 2), "cosine")  # scale-invariant
    assert torch.allclose(cosine, torch.zeros(2), atol=1e-6)
    assert latent_distance(pred, -pred, "cosine").allclose(torch.full((2,), 2.0))
    with pytest.raises(UnknownNameError, match="did you mean 'l2'"):
        latent_distance(pred, goal, "l3")


# ---------------------------------------------------------------------- world-model planning


@pytest.fixture(scope="module")
def wm(tiny_bundle):
    return WorldModel.from_pretrained(tiny_bundle)


@pytest.fixture(scope="module")
def blobs(blob_render):
    """uint8 (3, 32, 32, 3): blobs at three places."""
    return np.stack([blob_render(p) for p in ((12.0, 14.0), (20.0, 18.0), (16.0, 10.0))])


def some_actions(batch: int, seed: int) -> np.ndarray:
    a = np.zeros((batch, 7), np.float32)
    a[:, :2] = np.random.default_rng(seed).uniform(-1, 1, (batch, 2))
    return a


@pytest.mark.parametrize("use_cache", [True, False])
def test_state_select_replicates_and_reorders_episodes(tiny_bundle, blobs, use_cache):
    model = WorldModel.from_pretrained(tiny_bundle, use_cache=use_cache)
    model.reset(blobs, seed=3)
    model.step(some_actions(3, 0))
    state = model.snapshot()
    actions = some_actions(3, 1)
    model.step(actions)
    expected = model.latest_latents.clone()  # (3, L, D)
    # episodes 2, 0, 0, 0: each copy continues exactly like its original
    model.restore(state.select([2, 0, 0, 0]))
    assert model.batch_size == 4
    model.step(actions[[2, 0, 0, 0]])
    got = model.latest_latents
    assert torch.allclose(got, expected[[2, 0, 0, 0]], atol=1e-5)
    assert torch.equal(got[1], got[3])  # copies share the noise generator
    assert state.context.shape[0] == 3  # selecting leaves the source state alone
    with pytest.raises(ValueError, match="indices"):
        state.select([3])
    with pytest.raises(ValueError, match="indices"):
        state.select([])


def test_step_without_decoding(wm, blobs):
    wm.reset(blobs, seed=1)
    frames = wm.step(some_actions(3, 2))
    latents = wm.latest_latents.clone()
    wm.reset(blobs, seed=1)
    assert wm.step(some_actions(3, 2), decode=False) is None
    assert torch.equal(wm.latest_latents, latents) and frames.shape == (3, 32, 32, 3)


def test_rollout_costs_match_stepping_by_hand(wm, blobs):
    """Sample s of problem p rolls out from episode p with p's noise; cost = distance after
    the last step (or summed), computed in chunks when asked."""
    wm.reset(blobs[:2], seed=11)
    start = wm.snapshot()
    goal = wm.encode(blobs[[2, 0]])  # (2, L, D)
    actions = np.stack(
        [np.stack([some_actions(2, 10 * p + s) for s in range(3)]) for p in range(2)]
    )
    actions = actions.astype(np.float32)  # (P=2, S=3, H=2, 7)
    expected_last, expected_sum = np.zeros((2, 3)), np.zeros((2, 3))
    for p in range(2):
        for s in range(3):
            wm.restore(start.select([p]))
            for t in range(2):
                wm.step(actions[p, s, t][None])
                d = latent_distance(wm.latest_latents, goal[p : p + 1], "l1").item()
                expected_sum[p, s] += d
            expected_last[p, s] = d
    last = rollout_costs(wm, start, goal, actions, "l1")
    summed = rollout_costs(wm, start, goal, actions, "l1", sum_over_horizon=True, max_rollouts=4)
    assert np.allclose(last, expected_last, atol=1e-5)
    assert np.allclose(summed, expected_sum, atol=1e-5)


def test_planning_leaves_the_episode_unchanged(wm, blobs):
    wm.reset(blobs, seed=5)
    wm.step(some_actions(3, 3))
    reference = wm.snapshot()
    expected = wm.step(some_actions(3, 4))
    wm.restore(reference)
    config = CEMConfig(samples=8, elites=2, iterations=2, horizon=2)
    best, _ = plan_in_world_model(wm, wm.encode(blobs[::-1].copy()), config, rng=0)
    assert best.shape == (3, 2, 7)
    assert np.array_equal(wm.step(some_actions(3, 4)), expected)
    with pytest.raises(ValueError, match="goal_latents"):
        plan_in_world_model(wm, wm.encode(blobs[:2]), config, rng=0)


def test_planning_moves_the_blob_towards_the_goal(wm, blob_render):
    """Goals 8 px right or left of the blob: CEM's plan pushes dx the right way in total, and it
    brings the model closer to the goal than doing nothing."""
    starts = np.stack([blob_render((16.0, 16.0))] * 2)
    goals = np.stack([blob_render((24.0, 16.0)), blob_render((8.0, 16.0))])
    wm.reset(starts, seed=0)
    goal = wm.encode(goals)
    config = CEMConfig(samples=64, elites=8, iterations=4, horizon=2, dims=MOVING)
    best, info = plan_in_world_model(wm, goal, config, rng=0)
    # the blob's displacement after the horizon is the sum of the dx it is given
    assert best[0, :, 0].sum() > 0.2 and best[1, :, 0].sum() < -0.2
    zero = rollout_costs(wm, wm.snapshot(), goal, np.zeros((2, 1, 2, 7), np.float32))
    assert (info["best_cost"] < zero[:, 0]).all()


# ---------------------------------------------------------------------- the MPC policy


def obs_of(image: np.ndarray, instruction: str = "move the blob") -> dict:
    return {"image": image, "instruction": instruction}


def test_policy_plans_towards_the_goal_and_replans(wm, blob_render):
    goal = blob_render((24.0, 16.0))
    config = CEMConfig(samples=32, elites=4, iterations=2, horizon=3, dims=MOVING)
    policy = CEMPolicy(wm, goal=goal, config=config, replan_every=2, seed=0)
    assert isinstance(policy, Policy) and policy.name == "cem"
    assert policy.model is not wm and policy.model.dit is wm.dit  # own state, shared weights
    policy.reset("move the blob")
    plans, actions = [], []
    for x in (16.0, 17.0, 18.0, 19.0):
        actions.append(policy.act(obs_of(blob_render((x, 16.0)))))
        plans.append(policy.last_plan)
    assert all(a.shape == (7,) and a.dtype == np.float32 for a in actions)
    assert np.abs(np.stack(actions)).max() <= 1.0
    # replans on calls 1 and 3: the second action is the first plan's second step
    assert plans[0] is plans[1] and plans[2] is not plans[1]
    assert np.array_equal(actions[1], plans[0][1]) and np.array_equal(actions[2], plans[2][0])
    assert np.mean([a[0] for a in actions]) > 0  # the goal is to the right


def test_policy_chunks_goal_sources_and_determinism(wm, blob_render):
    config = CEMConfig(samples=16, elites=4, iterations=2, horizon=3)
    image = blob_render((16.0, 16.0))
    goal = blob_render((8.0, 20.0))
    chunked = CEMPolicy(wm, config=config, replan_every=3, chunk=True, seed=4)
    chunked.reset("move the blob")
    with pytest.raises(ValueError, match="no goal"):
        chunked.act(obs_of(image))
    chunk = chunked.act({**obs_of(image), "goal_image": goal})  # goal from the observation
    assert chunk.shape == (3, 7)
    again = CEMPolicy(wm, goal=goal, config=config, replan_every=3, chunk=True, seed=4)
    again.reset("move the blob")
    assert np.array_equal(again.act(obs_of(image)), chunk)
    # a larger observation is resized to the model's frames
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    assert again.act(obs_of(big)).shape == (3, 7)


def test_policy_bad_input(wm, blob_render):
    image = blob_render((16.0, 16.0))
    with pytest.raises(ValueError, match="replan_every"):
        CEMPolicy(wm, config=CEMConfig(horizon=2), replan_every=3)
    with pytest.raises(ValueError, match="bundle path"):
        CEMPolicy(wm, temperature=0.0)
    policy = CEMPolicy(
        wm, goal=image, config=CEMConfig(samples=4, elites=1, iterations=1, horizon=1)
    )
    with pytest.raises(ValueError, match="instruction"):
        policy.reset("")
    with pytest.raises(ValueError, match="image"):
        policy.act({"instruction": "move the blob"})
    with pytest.raises(ValueError, match="uint8"):
        policy.act(obs_of(image.astype(np.float32)))
    with pytest.raises(ValueError, match="goal image"):
        policy.set_goal(image[..., 0])


def test_registry_builds_the_cem_policy(tiny_bundle, blob_render):
    from policies.registry import load_policy

    policy = load_policy(
        "cem",
        model=str(tiny_bundle),
        config={"samples": 8, "elites": 2, "iterations": 1, "horizon": 2, "bounds": [-0.5, 0.5]},
        temperature=0.0,
    )
    assert isinstance(policy, CEMPolicy) and policy.config.bounds == (-0.5, 0.5)
    assert policy.model.temperature == 0.0
    policy.reset("move the blob")
    image = blob_render((16.0, 16.0))
    action = policy.act({**obs_of(image), "goal_image": blob_render((20.0, 16.0))})
    assert action.shape == (7,) and np.abs(action).max() <= 0.5


def test_goals_from_dataset_episodes(blob_dataset):
    from wm_env.dataset.lerobot import LeRobotDataset
    from wm_env.envs.starts import StartSet

    dataset = LeRobotDataset(blob_dataset)
    goal = episode_goal(blob_dataset, 2)
    assert np.array_equal(goal, dataset.frames(2)[-1]) and goal.shape == (32, 32, 3)
    start = StartSet.load(blob_dataset)[3]
    assert np.array_equal(start_goal(start, dataset), dataset.frames(3)[-1])
    loose = StartSet.load([goal])[0]  # frames given directly: no episode to take a goal from
    with pytest.raises(ValueError, match="goal image"):
        start_goal(loose, dataset)


# ---------------------------------------------------------------------- controllability


def test_controllability_writes_results_and_beats_no_search(tiny_bundle, blob_dataset, tmp_path):
    from policies.controllability import ControllabilityConfig, evaluate_controllability
    from wm_env.dataset.split import DataConfig

    config = ControllabilityConfig(
        bundle=tiny_bundle,
        data=DataConfig(dataset=blob_dataset, val_fraction=0.34),
        out=tmp_path / "ctrl",
        pairs=12,
        cem=CEMConfig(samples=64, elites=8, iterations=3, horizon=1, dims=MOVING),
        pairs_per_call=4,
    )
    summary = evaluate_controllability(config, progress=False)
    saved = json.loads((tmp_path / "ctrl" / "controllability.json").read_text())
    assert saved["pairs"] == 12 and saved["cem_recovered"] == summary["cem_recovered"]
    with open(tmp_path / "ctrl" / "controllability.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {"true_dx", "recovered_dx", "cost_true"} <= set(rows[0])
    assert "| CEM recovered |" in (tmp_path / "ctrl" / "controllability.md").read_text()
    # the blob moves by (dx, dy): searching recovers them better than guessing zero, and the
    # recovered action fits the model at least as well as the zero action
    moving = ("dx", "dy")
    assert summary["cem_recovered"]["abs_per_dim"]["dz"] == 0.0  # not searched: stays at 0
    found = np.mean([summary["cem_recovered"]["abs_per_dim"][d] for d in moving])
    zero = np.mean([summary["zero_action"]["abs_per_dim"][d] for d in moving])
    assert found < zero
    assert summary["model_cost"]["recovered"] <= summary["model_cost"]["zero_action"]


def test_controllability_config_and_cli(tiny_bundle, blob_dataset, tmp_path, capsys):
    from policies.controllability import ControllabilityConfig
    from wmgym.cli import main

    with pytest.raises(ValueError, match="horizon must be 1"):
        ControllabilityConfig(cem=CEMConfig(horizon=2))
    with pytest.raises(UnknownNameError, match="did you mean 'zero'"):
        ControllabilityConfig(init="zeros")
    out = tmp_path / "cli"
    main(
        [
            "eval",
            "controllability",
            "--bundle",
            str(tiny_bundle),
            "--data.dataset",
            str(blob_dataset),
            "--pairs",
            "3",
            "--cem.samples",
            "8",
            "--cem.elites",
            "2",
            "--cem.iterations",
            "1",
            "--out",
            str(out),
        ]
    )
    assert "Mean absolute error per action dimension" in capsys.readouterr().out
    assert json.loads((out / "controllability.json").read_text())["pairs"] == 3


def test_policy_with_expert_goals_plans_per_start(wm, blob_render, monkeypatch):
    import policies.expert_plan as expert_plan
    from wm_env.errors import UnknownNameError

    asked = []

    def fake_goal(task, seed, resolution=64, num_steps=40):
        asked.append((task, seed, resolution))
        return blob_render((8.0 + 4 * seed, 16.0))

    monkeypatch.setattr(expert_plan, "expert_final_frame", fake_goal)
    prototype = CEMPolicy(
        wm, goal="expert", config=CEMConfig(samples=8, elites=2, iterations=1, horizon=2)
    )
    assert prototype.goal_latents is None  # goals come per start
    first, second = prototype.for_start("lift", 0), prototype.for_start("lift", 2)
    assert asked == [("lift", 0, 32), ("lift", 2, 32)]  # rendered at the model's frame size
    assert not torch.equal(first.goal_latents, second.goal_latents)
    assert first.model is not prototype.model and prototype.goal_latents is None
    first.reset("move the blob")
    assert first.act(obs_of(blob_render((16.0, 16.0)))).shape == (7,)
    with pytest.raises(UnknownNameError, match="expert"):
        CEMPolicy(wm, goal="expret")
