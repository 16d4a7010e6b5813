"""State fidelity: true states by replay, the state read-out, and ``wmgym eval fidelity``.

Uses the 2-episode sim dataset of conftest (episode 0 lift, episode 1 push, 64x64) and, for the
end-to-end run, a bundle and a read-out trained on it for a few steps: the figures of such
models are meaningless, so the tests check the bookkeeping against cases whose answer is known
(a read-out that reads the true states has zero error; copying the first frame leaves the
moved cube behind).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from judges.state_readout import (
    OBJECT_CLASSES,
    ReadoutConfig,
    ReadoutScene,
    ReadStates,
    StateReadout,
    decode_outputs,
    encode_targets,
    episode_classes,
    load_readout,
    readout_loss,
    save_readout,
)
from wm_env.bundle import BundleError
from wm_env.errors import CorruptFileError


@pytest.fixture(scope="module")
def dataset(lift_push_dataset):
    from wm_env.dataset.lerobot import LeRobotDataset

    root = lift_push_dataset.parent / "lift_push_replayed"
    if not root.exists():
        shutil.copytree(lift_push_dataset, root)  # the replay cache is written into it
    return LeRobotDataset(root)


@pytest.fixture(scope="module")
def states(dataset):
    from wm_env.sim.replay import dataset_states

    return dataset_states(dataset, dataset.episode_ids, workers=1, progress=False)


def true_read(state, steps=slice(1, None)) -> ReadStates:
    """What a perfect read-out reads from the true frames ``steps`` of an episode."""
    eef = state.eef[steps]
    present = np.zeros((len(eef), len(OBJECT_CLASSES)))
    objects = np.zeros((len(eef), len(OBJECT_CLASSES), 3))
    for name, cls in episode_classes(state.episode_spec).items():
        present[:, OBJECT_CLASSES.index(cls)] = 1.0
        objects[:, OBJECT_CLASSES.index(cls)] = state.objects[name][steps]
    return ReadStates(eef, state.gripper[steps], present, objects)


# ---------------------------------------------------------------------- replay


def test_replay_recovers_the_recorded_robot_states_and_moves_the_pushed_cube(dataset, states):
    for e in dataset.episode_ids:
        recorded = dataset.states(int(e))
        s = states[int(e)]
        assert s.eef.shape == (dataset.length(int(e)), 3)
        assert np.abs(s.eef - recorded[:, :3]).max() < 1e-4
        assert np.abs(s.gripper - recorded[:, 7]).max() < 1e-4
        assert set(s.objects) == {o.name for o in s.episode_spec.objects}
    push = states[1]
    target = push.objects[push.episode_spec.roles["target"]]
    assert push.episode_spec.family == "push"
    moved = np.linalg.norm(target[-1, :2] - target[0, :2])
    assert moved > 0.04 if dataset.success(1) else moved >= 0.0


def test_replayed_states_are_cached_and_a_tampered_cache_is_refused(dataset, states, tmp_path):
    from wm_env.sim.replay import CACHE_DIR, dataset_states

    cache = dataset.root / CACHE_DIR / "episode_000000.npz"
    assert cache.exists()
    again = dataset_states(dataset, [0], workers=1, progress=False)  # read back, no replay
    assert np.array_equal(again[0].eef, states[0].eef)
    copy = tmp_path / "data"
    shutil.copytree(dataset.root, copy)
    from wm_env.dataset.lerobot import LeRobotDataset

    tampered = np.load(copy / CACHE_DIR / "episode_000000.npz")
    arrays = {k: tampered[k] for k in tampered.files}
    arrays["eef"] = arrays["eef"] + 0.01
    np.savez(copy / CACHE_DIR / "episode_000000.npz", **arrays)
    with pytest.raises(CorruptFileError, match="do not match"):
        dataset_states(LeRobotDataset(copy), [0], workers=1, progress=False)
    (copy / CACHE_DIR / "episode_000000.npz").write_bytes(b"not an npz")
    with pytest.raises(CorruptFileError, match="cannot read"):
        dataset_states(LeRobotDataset(copy), [0], workers=1, progress=False)


def test_replay_needs_a_start_state_and_refuses_a_replay_that_is_not_the_recording(dataset):
    from wm_env.sim.replay import ReplayError, replay_episode

    with pytest.raises(ReplayError, match="no start state"):
        replay_episode({}, dataset.actions(0))
    recorded = dataset.states(0)[:, :3].copy()
    recorded[5:] += 0.02  # as if the sim had changed since recording
    with pytest.raises(ReplayError, match="cm off"):
        replay_episode(dataset.episode_meta(0), dataset.actions(0), recorded)


def test_projection_lands_on_the_object_in_the_frame(dataset, states):
    from wm_env.sim.replay import project_to_pixels
    from wm_env.sim.tasks import TASK_COLORS

    frame = dataset.frames(0)[0]
    for name, path in states[0].objects.items():
        color = states[0].episode_spec.placement(name).color
        col, row = project_to_pixels(path[0], "workspace", 64, 64).astype(int)
        pixel = frame[row, col].astype(float)
        hue = pixel / pixel.max()  # shading darkens a face, the hue stays
        nearest = min(
            TASK_COLORS,
            key=lambda c: np.abs(
                np.array(TASK_COLORS[c][:3]) / max(TASK_COLORS[c][:3]) - hue
            ).sum(),
        )
        assert nearest == color, (name, color, pixel)


# ---------------------------------------------------------------------- read-out


def test_targets_round_trip_and_the_loss_is_zero_only_at_the_truth(states):
    read = true_read(states[1], slice(None))
    targets = torch.from_numpy(
        encode_targets(read.eef, read.gripper, read.present > 0.5, read.objects)
    )
    back = decode_outputs(targets)
    assert np.allclose(back.eef, read.eef) and np.allclose(
        back.objects[read.present > 0.5], read.objects[read.present > 0.5]
    )
    logits = targets.clone()
    k = len(OBJECT_CLASSES)
    slots = logits[:, 4:].reshape(-1, k, 4)
    slots[..., 3] = torch.where(slots[..., 3] > 0.5, 20.0, -20.0)  # confident presence logits
    perfect, _ = readout_loss(logits, targets)
    off = logits.clone()
    off[:, 0] += 0.5  # eef x off by 5 cm
    worse, terms = readout_loss(off, targets)
    assert perfect.item() < 1e-6 and worse.item() > 0.01 and terms["robot"] > 0


def test_readout_scene_gives_the_sims_verdict_on_true_states(dataset, states):
    from wm_env.sim.tasks import get_family

    for e, s in states.items():
        spec = s.episode_spec
        read = true_read(s, slice(None))
        verdicts = [
            get_family(spec.family).success(ReadoutScene(read, t, spec), spec)
            for t in range(len(s.eef))
        ]
        assert np.array_equal(verdicts, dataset.success_per_step(int(e)))


def test_readout_saves_loads_and_refuses_what_it_cannot_read(tmp_path):
    model = StateReadout(ReadoutConfig(image_size=32, width=8, hidden=16))
    save_readout(model, tmp_path / "r", {"note": "test"})
    loaded = load_readout(tmp_path / "r")
    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    a, b = model.eval().read(frames), loaded.read(frames)
    assert np.allclose(a.eef, b.eef) and a.objects.shape == (3, len(OBJECT_CLASSES), 3)
    assert model.read(frames[None]).eef.shape == (1, 3, 3)  # leading dims kept
    with pytest.raises(ValueError, match="uint8"):
        model.read(frames.astype(np.float32))
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    config["readout"]["classes"] = ["cube:red"]
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="retrain"):
        load_readout(tmp_path / "r")
    from wm_env.bundle import write_component

    write_component(tmp_path / "other", "something", {"x": 1})
    with pytest.raises(BundleError, match="no state read-out"):
        load_readout(tmp_path / "other")


# ---------------------------------------------------------------------- errors of one episode


def test_state_errors_are_zero_for_a_perfect_read_and_see_a_vanished_cube(dataset, states):
    from train.fidelity import state_errors

    s = states[1]
    frames = dataset.frames(1)[1:]
    perfect = state_errors(true_read(s), s, frames, frames)
    assert np.allclose(perfect.eef_cm, 0) and np.allclose(perfect.gripper_cm, 0)
    assert np.allclose(np.nan_to_num(perfect.moved_cm), 0)
    assert np.allclose(perfect.unmoved_cm, 0) and np.allclose(perfect.colour, 0)
    assert perfect.kept.min() == 1.0 and not perfect.lost
    assert perfect.success == bool(dataset.success_per_step(1)[-1])
    target = s.episode_spec.roles["target"]
    vanished = true_read(s)
    k = OBJECT_CLASSES.index(episode_classes(s.episode_spec)[target])
    vanished.present[-3:, k] = 0.0  # the pushed cube fades in the last steps
    vanished.eef = vanished.eef + np.array([0.03, 0.0, 0.0])  # and the arm is 3 cm off
    errors = state_errors(vanished, s, frames, frames)
    assert errors.lost and errors.kept[-1] == pytest.approx(2 / 3)
    assert np.allclose(errors.eef_cm, 3.0)


# ---------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def sim_bundle(dataset, tmp_path_factory):
    """A VAE + DiT bundle trained a few steps on the sim dataset: the runtime runs, no more."""
    from train.loop import OptimConfig, RuntimeConfig
    from train.stage_dynamics import DynamicsStageConfig, run_dynamics_stage
    from train.stage_encoder import EncoderStageConfig, run_encoder_stage
    from wm_env.dataset.split import DataConfig

    base = tmp_path_factory.mktemp("sim_bundle")
    data = DataConfig(dataset=dataset.root, val_fraction=0.0)
    optim = OptimConfig(steps=3, batch_size=2, warmup_steps=1, ema_decay=0.0, log_every=1)
    torch.manual_seed(0)
    run_encoder_stage(
        EncoderStageConfig(
            bundle=base / "b", data=data, base_channels=8, latent_channels=4, optim=optim,
            runtime=RuntimeConfig(), run_dir=base / "runs" / "enc",
        ),
        progress=False,
    )  # fmt: skip
    run_dynamics_stage(
        DynamicsStageConfig(
            bundle=base / "b", data=data, preset=None, hidden=32, depth=2, heads=2,
            patch_size=2, num_steps=1, mean_head_width=8, mean_head_depth=1, optim=optim,
            runtime=RuntimeConfig(), run_dir=base / "runs" / "dyn",
        ),
        progress=False,
    )  # fmt: skip
    return base / "b"


@pytest.fixture(scope="module")
def readout_dir(dataset, tmp_path_factory):
    from train.loop import OptimConfig
    from train.stage_readout import ReadoutStageConfig, run_readout_stage
    from wm_env.dataset.split import DataConfig

    base = tmp_path_factory.mktemp("readout")
    return run_readout_stage(
        ReadoutStageConfig(
            out=base / "readout",
            data=DataConfig(dataset=dataset.root, val_fraction=0.5),
            readout=ReadoutConfig(width=8, hidden=32),
            replay_workers=1,
            optim=OptimConfig(steps=20, batch_size=8, lr=1e-3, warmup_steps=2, ema_decay=0.0),
            run_dir=base / "run",
        ),
        progress=False,
    )


def test_readout_stage_records_its_held_out_error(readout_dir):
    section = json.loads((readout_dir / "config.json").read_text())["readout"]
    held_out = section["held_out"]
    assert held_out["episodes"] == 1 and held_out["frames"] > 20
    assert held_out["eef_cm"] > 0 and 0 <= held_out["presence_accuracy"] <= 1
    assert section["steps"] == 20 and section["train_episodes"] == 1


def test_eval_fidelity_end_to_end(dataset, sim_bundle, readout_dir, tmp_path):
    from train.fidelity import FidelityConfig, evaluate_fidelity
    from wm_env.dataset.split import DataConfig

    out = tmp_path / "fidelity"
    config = FidelityConfig(
        bundle=sim_bundle, readout=readout_dir, data=DataConfig(dataset=dataset.root),
        out=out, horizon=40, lpips=False, replay_workers=1, gif_episodes=2,
    )  # fmt: skip
    f = evaluate_fidelity(config, progress=False)
    lengths = {e: min(40, dataset.length(e) - 1) for e in (0, 1)}
    assert f["episodes"] == 2 and f["horizon"] == max(lengths.values())
    assert f["episode_steps"] == {str(e): n for e, n in lengths.items()}
    model, copy = f["states"]["model"], f["states"]["copy"]
    assert len(model["eef_cm"]) == f["horizon"]
    # step 1 of copy-first shows the start frame, which is nearly the true frame 1
    assert f["pixels"]["copy"]["psnr"][0] > f["pixels"]["copy"]["psnr"][-1]
    assert all(v is not None for v in f["pixels"]["model"]["psnr"][: min(lengths.values())])
    assert set(f["targets"]) >= {"eef_cm@20", "success_agreement", "false_success"}
    assert 0 <= model["success"]["agreement"] <= 1 and 0 <= copy["lost_episodes"] <= 1
    for name in ("fidelity.json", "fidelity.md", "per_step.csv", "errors.png", "fidelity_grid.gif"):
        assert (out / name).exists(), name
    assert "| target | figure | met |" in (out / "fidelity.md").read_text()
    import imageio.v3 as iio

    gif = iio.imread(out / "fidelity_grid.gif")
    assert gif.shape[0] == max(lengths.values()) and gif.shape[2] > 2 * 256  # two 4x columns


def test_carried_state_errors_measure_the_models_own_state(states):
    from train.fidelity import carried_state_errors

    s = states[1]
    proprio = np.zeros((len(s.eef) - 1, 8))
    proprio[:, :3], proprio[:, 7] = s.eef[1:], s.gripper[1:]
    perfect = carried_state_errors(proprio, s)
    assert np.allclose(perfect["eef_cm"], 0) and np.allclose(perfect["gripper_cm"], 0)
    proprio[:, 2] += 0.02  # 2 cm too high
    proprio[:, 7] -= 0.01  # 1 cm less open
    off = carried_state_errors(proprio[:5], s)
    assert np.allclose(off["eef_cm"], 2.0) and np.allclose(off["gripper_cm"], 1.0)
    assert len(off["eef_cm"]) == 5


def test_eval_fidelity_reports_the_state_a_state_model_carries(
    dataset, sim_bundle, readout_dir, tmp_path
):
    from train.fidelity import FidelityConfig, evaluate_fidelity
    from train.loop import OptimConfig
    from train.stage_dynamics import DynamicsStageConfig, run_dynamics_stage
    from wm_env.dataset.split import DataConfig

    bundle = shutil.copytree(sim_bundle, tmp_path / "state_bundle")
    run_dynamics_stage(
        DynamicsStageConfig(
            bundle=bundle, data=DataConfig(dataset=dataset.root, val_fraction=0.0), preset=None,
            hidden=32, depth=1, heads=2, patch_size=2, num_steps=1, mean_head_width=8,
            mean_head_depth=1, state=True, run_dir=tmp_path / "run", val_every=0,
            optim=OptimConfig(steps=2, batch_size=2, warmup_steps=1, ema_decay=0.0, log_every=1),
        ),
        progress=False,
    )  # fmt: skip
    out = tmp_path / "fidelity"
    config = FidelityConfig(
        bundle=bundle, readout=readout_dir, data=DataConfig(dataset=dataset.root), out=out,
        horizon=6, lpips=False, replay_workers=1, gif_episodes=0,
    )  # fmt: skip
    f = evaluate_fidelity(config, progress=False)
    carried = f["carried_state"]
    assert len(carried["eef_cm"]) == 6 and all(0 <= v < 100 for v in carried["eef_cm"])
    assert "the model's own state" in (out / "fidelity.md").read_text()


def test_eval_fidelity_refuses_episodes_without_start_states(dataset, tmp_path):
    from train.fidelity import FidelityConfig, select_episodes
    from wm_env.dataset.split import DataConfig

    config = FidelityConfig(data=DataConfig(dataset=dataset.root))

    class NoStarts:
        root, episode_ids = dataset.root, dataset.episode_ids
        length = staticmethod(dataset.length)

        @staticmethod
        def episode_meta(e):
            return {}

    with pytest.raises(ValueError, match="no start state"):
        select_episodes(NoStarts(), config)
    with pytest.raises(ValueError, match="split"):
        FidelityConfig(split="test")


def test_eval_fidelity_refuses_a_bundle_that_renders_no_frames(sim_bundle, tmp_path):
    from train.fidelity import require_decoder

    require_decoder(sim_bundle)  # the VAE decodes
    bundle = tmp_path / "b"
    shutil.copytree(sim_bundle, bundle)
    config = json.loads((bundle / "config.json").read_text())
    config["encoder"]["has_decoder"] = False
    (bundle / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="no decoder"):
        require_decoder(bundle)
