"""World models that condition on the robot's state (wm_env/model/state_head.py, ``--state``).

Built on the moving-blob dataset of conftest.py, whose 2-D state is the blob's position: it
moves by ``4 * (dx, dy)`` pixels per step, clipped to [6, 26].
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from train.loop import OptimConfig
from train.stage_dynamics import DynamicsStageConfig, grown_state_dict, run_dynamics_stage
from wm_env.bundle import read_config
from wm_env.dataset.split import DataConfig
from wm_env.model.dit import DiT, DiTConfig
from wm_env.model.state_head import (
    StateHead,
    StateMap,
    StateNormalizer,
    canonical_states,
    state_statistics,
)
from wm_env.world_model import WorldModel


def optim(steps: int, lr: float = 3e-3) -> OptimConfig:
    return OptimConfig(
        steps=steps, batch_size=16, lr=lr, warmup_steps=1, ema_decay=0.0, log_every=1,
        checkpoint_every=10**6,
    )  # fmt: skip


def state_dynamics(bundle, blob_dataset, run_dir, steps: int, **overrides) -> DynamicsStageConfig:
    kwargs = dict(
        bundle=bundle, data=DataConfig(dataset=blob_dataset), preset=None, hidden=64, depth=1,
        heads=4, patch_size=1, num_steps=2, action_dropout=0.0, mean_head_width=16,
        mean_head_depth=1, state=True, optim=optim(steps), run_dir=run_dir, val_every=0,
    )  # fmt: skip
    kwargs.update(overrides)
    return DynamicsStageConfig(**kwargs)


@pytest.fixture(scope="module")
def state_bundle(tiny_bundle, blob_dataset, tmp_path_factory):
    """The tiny bundle's encoder with a state-conditioned DiT (300 steps, about 10 s)."""
    base = tmp_path_factory.mktemp("state_bundle")
    bundle = shutil.copytree(tiny_bundle, base / "bundle")
    torch.manual_seed(0)
    run_dynamics_stage(state_dynamics(bundle, blob_dataset, base / "run", 300), progress=False)
    return bundle


def test_canonical_states_fix_the_quaternion_sign():
    state = np.array([[0.1, 0.2, 0.3, 0.5, -0.5, 0.5, -0.5, 0.04]], np.float32)
    out = canonical_states(state)
    np.testing.assert_allclose(out[0, 3:7], [-0.5, 0.5, -0.5, 0.5])  # w >= 0, same rotation
    np.testing.assert_allclose(out[0, [0, 1, 2, 7]], state[0, [0, 1, 2, 7]])
    assert torch.equal(canonical_states(torch.from_numpy(state)), torch.from_numpy(out))
    other = np.ones((3, 2), np.float32)  # not the sim's layout: unchanged
    assert canonical_states(other) is other


def test_state_statistics_skip_the_jump_between_episodes():
    states = np.array([[0.0], [1.0], [2.0], [100.0], [101.0]])  # two episodes: 3 + 2 frames
    stats = state_statistics(states, np.array([0, 3]), np.array([3, 2]))
    assert stats["state_delta_std"] == pytest.approx([1e-5])  # every change within is 1
    assert stats["state_mean"] == pytest.approx([40.8])


def test_state_head_and_map_shapes_and_zero_start():
    head = StateHead(state_dim=3, history=2, action_dim=5)
    states, action = torch.randn(4, 1, 3), torch.randn(4, 5)
    assert torch.equal(head(states, action), torch.zeros(4, 3))  # one state given: repeated
    with pytest.raises(ValueError, match="states must be"):
        head(torch.randn(4, 2, 2), action)
    with pytest.raises(ValueError, match="action must be"):
        head(states, torch.randn(4, 4))
    grid = StateMap(3, (4, 2), channels=5)(torch.randn(6, 3))
    assert grid.shape == (6, 5, 4, 2) and not grid.any()
    norm = StateNormalizer({"state_mean": [1.0], "state_std": [2.0], "state_delta_std": [0.5]})
    assert norm.normalize(torch.tensor([[5.0]])).item() == 2.0
    assert norm.unnormalize(torch.tensor([[2.0]])).item() == 5.0
    with pytest.raises(ValueError, match="lack"):
        StateNormalizer({"state_mean": [1.0]})


def test_dit_condition_width_includes_the_state():
    config = DiTConfig(in_channels=4, grid=(4, 4), patch_size=2, preset=None, hidden=32,
                       depth=1, heads=4, action_dim=8, state_dim=3, mean_head_width=8)  # fmt: skip
    dit = DiT(config).eval()
    assert config.condition_width == 11 and dit.state_head is not None
    x = torch.randn(2, 3, 16, 4)
    out = dit(x, torch.zeros(2, 3), torch.randn(2, 3, 11))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="condition width"):
        dit(x, torch.zeros(2, 3), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="state_dim"):
        DiTConfig(in_channels=4, grid=(4, 4), state_dim=-1)


def test_a_grown_model_computes_what_its_start_computed():
    """The state parts start at zero: before training, the states change nothing."""
    common = dict(in_channels=4, grid=(4, 4), patch_size=2, preset=None, hidden=32, depth=1,
                  heads=4, action_dim=8, mean_head_width=8, mean_head_depth=1)  # fmt: skip
    torch.manual_seed(0)
    old = DiT(DiTConfig(**common)).eval()
    for p in old.parameters():  # trained-looking weights: no zeros that would hide a mistake
        p.data.add_(torch.randn_like(p) * 0.05)
    grown_config = DiTConfig(**common, state_dim=3)
    grown = DiT(grown_config).eval()
    grown.load_state_dict(grown_state_dict(grown, old.state_dict(), grown_config))
    x, t, a = torch.randn(2, 3, 16, 4), torch.rand(2, 3), torch.randn(2, 3, 8)
    s = torch.randn(2, 3, 3)
    torch.testing.assert_close(grown(x, t, torch.cat([a, s], 2)), old(x, t, a))
    context, cond = torch.randn(2, 2, 16, 4), torch.randn(2, 8)
    torch.testing.assert_close(
        grown.mean_head(context, torch.cat([cond, s[:, 0]], 1)), old.mean_head(context, cond)
    )
    # the state map's input channels are not zero (zero on both sides would never learn)
    map_columns = grown.mean_head.inp.weight[:, -grown_config.state_map_channels :]
    assert map_columns.abs().sum() > 0
    with pytest.raises(ValueError, match="cannot grow"):
        wrong = {**old.state_dict(), "final_layer.linear.weight": torch.zeros(3, 3)}
        grown_state_dict(grown, wrong, grown_config)


def test_state_stage_writes_state_statistics_and_learns_the_state(state_bundle, blob_dataset):
    dynamics = read_config(state_bundle)["dynamics"]
    assert dynamics["dit"]["state_dim"] == 2
    assert len(dynamics["state_mean"]) == 2 and len(dynamics["state_delta_std"]) == 2
    model = WorldModel.from_pretrained(state_bundle)
    assert model.uses_states
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="conditions on the robot's state"):
        model.reset(frames, seed=0)
    with pytest.raises(ValueError, match="states must be"):
        model.reset(frames, seed=0, states=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        model.reset(frames, seed=0, states=np.full((3, 2), np.nan, np.float32))
    start = np.array([[16.0, 16.0], [10.0, 20.0], [20.0, 12.0]], np.float32)
    model.reset(frames, seed=0, states=start)
    np.testing.assert_allclose(model.latest_states, start, atol=1e-4)
    actions = np.zeros((3, 7), np.float32)
    actions[:, :2] = [[1.0, 0.0], [0.0, -1.0], [-0.5, 0.5]]
    model.step(actions)
    moved = model.latest_states - start  # the blob moves 4 px per unit of action
    np.testing.assert_allclose(moved, 4 * actions[:, :2], atol=1.0)
    # an untrained state head would leave the state where it was: this fit could fail
    assert np.abs(moved).max() > 1.5


def test_state_rollouts_branch_and_restart_with_their_states(state_bundle):
    model = WorldModel.from_pretrained(state_bundle)
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    start = np.array([[16.0, 16.0], [10.0, 20.0]], np.float32)
    model.reset(frames, seed=0, states=start)
    actions = np.zeros((2, 7), np.float32)
    actions[:, 0] = 1.0
    snapshot = model.snapshot()
    first = model.step(actions)
    after = model.latest_states.copy()
    model.restore(snapshot)
    np.testing.assert_array_equal(model.step(actions), first)
    np.testing.assert_array_equal(model.latest_states, after)
    model.restore(snapshot.select([1, 1]))
    np.testing.assert_allclose(model.latest_states, start[[1, 1]], atol=1e-4)
    model.reset(frames, seed=0, states=start)
    model.step(actions)
    model.reset_subset([0], frames[:1], seed=5, states=start[1:])
    np.testing.assert_allclose(model.latest_states[0], start[1], atol=1e-4)
    assert not np.allclose(model.latest_states[1], start[1])


def test_state_stage_grows_from_a_model_without_states(
    state_bundle, tiny_bundle, blob_dataset, tmp_path
):
    grown = shutil.copytree(tiny_bundle, tmp_path / "grown")
    frozen = dataclasses.replace(optim(1), lr=1e-12)
    run_dynamics_stage(
        state_dynamics(grown, blob_dataset, tmp_path / "run", 1, init_from=tiny_bundle,
                       optim=frozen, num_steps=4),
        progress=False,
    )  # fmt: skip
    dynamics = read_config(grown)["dynamics"]
    assert dynamics["dit"]["state_dim"] == 2 and dynamics["init_from"]["steps"] == 800
    frames = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    actions = np.zeros((2, 7), np.float32)
    actions[:, 1] = 0.5
    source, model = WorldModel.from_pretrained(tiny_bundle), WorldModel.from_pretrained(grown)
    source.reset(frames, seed=3)
    model.reset(frames, seed=3, states=np.full((2, 2), 16.0, np.float32))
    np.testing.assert_allclose(
        model.step(actions).astype(int), source.step(actions).astype(int), atol=1
    )
    # a state model cannot start a model without states
    target = shutil.copytree(tiny_bundle, tmp_path / "target")
    with pytest.raises(ValueError, match="another DiT.*state_dim"):
        run_dynamics_stage(
            state_dynamics(target, blob_dataset, tmp_path / "r2", 1, init_from=state_bundle,
                           state=False, hidden=64),
            progress=False,
        )  # fmt: skip


def test_state_stage_refuses_data_without_states(tiny_bundle, blob_dataset, tmp_path, monkeypatch):
    from train import packed

    original = packed.encoded_dataset

    def stateless(*args, **kwargs):
        data = original(*args, **kwargs)
        return data._replace(train={**data.train, "states": None})

    monkeypatch.setattr(packed, "encoded_dataset", stateless)
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    with pytest.raises(ValueError, match="observation.state"):
        run_dynamics_stage(
            state_dynamics(bundle, blob_dataset, tmp_path / "run", 1), progress=False
        )


# ---------------------------------------------------------------------- the envs


def test_env_starts_from_the_recorded_state_and_observes_the_carried_one(
    state_bundle, blob_dataset
):
    import gymnasium as gym

    import wm_env
    from wm_env.dataset.lerobot import LeRobotDataset
    from wm_env.envs.world_model_env import WorldModelEnv

    dataset = LeRobotDataset(blob_dataset)
    env = WorldModelEnv(state_bundle, blob_dataset)
    assert env.observation_space["state"].shape == (2,)
    obs, _ = env.reset(seed=0, options={"episode": 2})
    np.testing.assert_allclose(obs["state"], dataset.states(2)[0], atol=1e-4)
    action = np.zeros(7, np.float32)
    action[0] = 1.0
    obs, *_ = env.step(action)
    assert env.observation_space.contains(obs)
    assert obs["state"][0] - dataset.states(2)[0][0] > 1.5  # the blob moved right
    given = {"frames": dataset.frames(0)[0], "instruction": "move", "state": [12.0, 20.0]}
    obs, _ = env.reset(seed=0, options=given)
    np.testing.assert_allclose(obs["state"], [12.0, 20.0], atol=1e-4)
    with pytest.raises(ValueError, match="state must be"):
        env.reset(options={**given, "state": [[1.0]]})
    stateless = WorldModelEnv(state_bundle, [dataset.frames(0)[0]])
    with pytest.raises(ValueError, match="start '0' has none"):
        stateless.reset(seed=0)

    venv = gym.make_vec(
        wm_env.WORLD_MODEL_ENV_ID, num_envs=2, vectorization_mode="vector_entry_point",
        model=state_bundle, starts=blob_dataset, max_episode_steps=1,
    )  # fmt: skip
    obs, _ = venv.reset(seed=0, options={"episode": [1, 3]})
    np.testing.assert_allclose(
        obs["state"], np.stack([dataset.states(e)[0] for e in (1, 3)]), atol=1e-4
    )
    venv.step(np.zeros((2, 7), np.float32))
    obs, *_ = venv.step(np.zeros((2, 7), np.float32))  # the next-step autoreset draws new starts
    starts = [dataset.states(int(i.split("/")[-1]))[0] for i in venv.unwrapped._start_ids]
    np.testing.assert_allclose(obs["state"], np.stack(starts), atol=1e-4)


def fit_head_of_a_copy(state_bundle, blob_dataset, tmp_path, **fit):
    """(bundle, config, figures): the state head of a copy of ``state_bundle`` fitted with
    ``fit`` (fields of :class:`StateHeadStageConfig`) on the blob dataset."""
    from train.stage_state_head import StateHeadStageConfig, run_state_head_stage

    bundle = shutil.copytree(state_bundle, tmp_path / "bundle")
    config = StateHeadStageConfig(
        bundle=bundle, data=DataConfig(dataset=blob_dataset, val_fraction=0.34), **fit
    )
    return bundle, config, run_state_head_stage(config, progress=False)


def unit_rollout(arrays: dict):
    """A :class:`StateRollout` of 2-D states in their own units (mean 0, std 1), history 2."""
    from train.stage_state_head import StateRollout

    norm = StateNormalizer({"state_mean": [0.0, 0.0], "state_std": [1.0, 1.0],
                            "state_delta_std": [1.0, 1.0]})  # fmt: skip
    return StateRollout(arrays, norm, {"q01": [-1.0] * 7, "q99": [1.0] * 7}, 8, history=2)


def test_state_head_stage_fits_the_head_alone_and_rewrites_only_it(
    state_bundle, tiny_bundle, blob_dataset, tmp_path
):
    from safetensors.torch import load_file

    from train.stage_state_head import format_figures, run_state_head_stage, window_starts

    assert window_starts(np.array([0, 5]), np.array([5, 3]), 2).tolist() == [0, 1, 2, 5]
    before = load_file(state_bundle / "dynamics.safetensors")
    bundle, config, figures = fit_head_of_a_copy(
        state_bundle, blob_dataset, tmp_path, steps=300, batch_size=64, unroll=4
    )
    # it fits its own rollouts of the training windows (4 blob episodes: too few to generalise)
    assert figures["fit_loss_after"] < 0.5 * figures["fit_loss_before"]
    assert len(figures["held_out_after"]["state"]) == 2  # steps 1 and 10 of 11-step episodes
    assert "| state, after |" in format_figures(figures)
    after = load_file(bundle / "dynamics.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("state_head.") for k in changed)
    assert read_config(bundle)["dynamics"]["state_head_fit"]["steps"] == 300
    WorldModel.from_pretrained(bundle)  # still a valid bundle (hashes rewritten)
    with pytest.raises(ValueError, match="no state model"):
        run_state_head_stage(dataclasses.replace(config, bundle=tiny_bundle), progress=False)


def test_state_head_fit_through_time_trains_each_step_for_the_steps_after_it(
    state_bundle, blob_dataset, tmp_path
):
    """Same loss value either way; through time the gradient also holds what a step's error
    does to later steps, so it differs; the stage records the choice and still fits."""
    states = np.cumsum(np.random.default_rng(0).normal(size=(12, 2)), 0).astype(np.float32)
    arrays = {"states": states, "actions": np.random.default_rng(1).uniform(-1, 1, (12, 7)),
              "starts": np.array([0]), "lengths": np.array([12])}  # fmt: skip
    rollout = unit_rollout(arrays)
    torch.manual_seed(0)
    head = StateHead(2, 2, 8)
    for p in head.parameters():
        p.data.add_(torch.randn_like(p) * 0.1)
    rows = torch.tensor([0, 3])
    grads = []
    for through_time in (False, True):
        head.zero_grad()
        loss = rollout.loss(head, rows, 5, through_time)
        loss.backward()
        grads.append((loss.item(), head.net[0].weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0])
    assert not torch.allclose(grads[0][1], grads[1][1])
    bundle, _, figures = fit_head_of_a_copy(
        state_bundle, blob_dataset, tmp_path, steps=200, batch_size=64, unroll=6, through_time=True
    )
    assert figures["fit_loss_after"] < 0.5 * figures["fit_loss_before"]
    assert read_config(bundle)["dynamics"]["state_head_fit"]["through_time"] is True


def test_a_state_head_window_at_an_episode_start_repeats_the_first_state_as_the_runtime_does(
    state_bundle, blob_dataset, tmp_path
):
    from train.stage_state_head import StateHeadStageConfig

    states = np.arange(24, dtype=np.float32).reshape(12, 2)
    arrays = {"states": states, "actions": np.zeros((12, 7), np.float32),
              "starts": np.array([0, 6]), "lengths": np.array([6, 6])}  # fmt: skip
    rollout = unit_rollout(arrays)
    seen = []

    class Recorder(torch.nn.Module):
        actions = 1

        def forward(self, context, action):
            seen.append(context.clone())
            return torch.zeros(context.shape[0], 2)

    rollout.loss(Recorder(), torch.tensor([6, 8]), 1)
    # the second episode's first row: its own first state twice, not the first episode's last
    assert seen[0][0].tolist() == [[12.0, 13.0], [12.0, 13.0]]
    assert seen[0][1].tolist() == [[14.0, 15.0], [16.0, 17.0]]
    with pytest.raises(ValueError, match="start_fraction"):
        StateHeadStageConfig(start_fraction=1.5)
    bundle, _, figures = fit_head_of_a_copy(
        state_bundle, blob_dataset, tmp_path, steps=200, batch_size=64, unroll=6, start_fraction=1.0
    )
    assert figures["fit_loss_after"] < figures["fit_loss_before"]
    assert read_config(bundle)["dynamics"]["state_head_fit"]["start_fraction"] == 1.0


def test_a_state_head_reads_the_last_actions_with_null_ones_before_the_start():
    torch.manual_seed(0)
    one = StateHead(state_dim=3, history=2, action_dim=5)
    for p in one.parameters():
        p.data.add_(torch.randn_like(p) * 0.1)
    three = one.with_actions(3)  # computes what it started from
    states, actions = torch.randn(4, 2, 3), torch.randn(4, 3, 5)
    torch.testing.assert_close(three(states, actions), one(states, actions[:, -1]))
    for p in three.parameters():
        p.data.add_(torch.randn_like(p) * 0.1)
    null = torch.zeros(4, 2, 5)
    null[..., -1] = 1.0
    newest = actions[:, -1]
    torch.testing.assert_close(
        three(states, newest), three(states, torch.cat([null, newest[:, None]], 1))
    )
    assert not torch.allclose(three(states, actions), three(states, newest))  # older ones count
    with pytest.raises(ValueError, match="action must be"):
        three(states, torch.randn(4, 3, 4))
    with pytest.raises(ValueError, match="actions >= 1"):
        StateHead(3, 2, 5, actions=0)


def test_state_head_stage_can_give_the_head_more_actions(state_bundle, blob_dataset, tmp_path):
    bundle, _, figures = fit_head_of_a_copy(
        state_bundle, blob_dataset, tmp_path, steps=100, batch_size=64, unroll=4, actions=3
    )
    assert figures["fit_loss_after"] < figures["fit_loss_before"]
    assert read_config(bundle)["dynamics"]["dit"]["state_head_actions"] == 3
    model = WorldModel.from_pretrained(bundle)
    assert model.dit.state_head.actions == 3
    model.reset(
        np.zeros((2, 32, 32, 3), np.uint8), seed=0, states=np.full((2, 2), 16.0, np.float32)
    )
    actions = np.zeros((2, 7), np.float32)
    actions[:, 0] = 0.5
    for _ in range(3):
        model.step(actions)
    assert model.latest_states[0, 0] > 16.5  # the blob moved right, as the actions say


def test_judge_replays_of_a_state_model_start_from_the_episodes_states(state_bundle, blob_dataset):
    """Calibration replays give a state model the recorded start states it needs."""
    from judges.calibrate import held_out_episodes, replay_actions, start_states

    episodes = held_out_episodes(DataConfig(dataset=blob_dataset, val_fraction=0.34))
    states = start_states(episodes)
    assert states is not None and states.shape == (len(episodes), episodes[0]["state"].shape[0])
    wm = WorldModel.from_pretrained(state_bundle)
    firsts = np.stack([e["frames"][0] for e in episodes])
    actions = [e["actions"][:3] for e in episodes]
    replays = replay_actions(wm, firsts, actions, states=states)
    assert [len(r) for r in replays] == [4] * len(episodes)
    with pytest.raises(ValueError, match="state"):
        replay_actions(wm, firsts, actions)
