"""The success probe (training stage, judge), world-model replays and the calibration command.

Data: a labelled synthetic dataset (no simulator): an orange blob moves by the action; an
episode succeeds when the blob ends in the right half ("push the red cube to the right"). A
tiny bundle (VAE + 1-layer DiT, briefly trained) provides the latents and the replays.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from judges.base import Verdict, check_judge_input
from judges.probe import (
    ProbeConfig,
    SuccessProbe,
    describe_instruction_ids,
    instruction_ids,
    uniform_frame_indices,
)
from wm_env.options import WorldModelOptions

SIZE, EPISODES = 32, 32
INSTRUCTION = "push the red cube to the right"


def render(x: float, y: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 5.0**2))
    return (30 + 220 * g[..., None] * np.array([1.0, 0.7, 0.3])).astype(np.uint8)


@pytest.fixture(scope="module")
def labelled_dataset(tmp_path_factory):
    """32 episodes of 6-9 frames; success per frame = the blob is right of the centre."""
    from wm_env.dataset.lerobot import LeRobotWriter
    from wm_env.dataset.record import EpisodeRecord

    root = tmp_path_factory.mktemp("labelled") / "dataset"
    rng = np.random.default_rng(0)
    writer = LeRobotWriter(root, fps=5)
    for episode in range(EPISODES):
        steps = int(rng.integers(5, 9))
        direction = 1.0 if episode % 2 else -1.0  # half end right (success), half left
        actions = np.zeros((steps, 7), np.float32)
        actions[:, 0] = direction * rng.uniform(0.3, 1.0, steps)
        actions[:, 1] = rng.uniform(-0.3, 0.3, steps)
        x, y = float(rng.uniform(12, 20)), float(rng.uniform(12, 20))
        frames, xs = [render(x, y)], [x]
        for a in actions:
            x, y = float(np.clip(x + 3 * a[0], 5, 27)), float(np.clip(y + 3 * a[1], 5, 27))
            frames.append(render(x, y))
            xs.append(x)
        flags = np.array(xs) > SIZE / 2
        writer.write_episode(
            EpisodeRecord(
                episode_index=episode,
                frames={"image": np.stack(frames)},
                actions=actions,
                states=np.zeros((steps + 1, 2), np.float32),
                instruction=INSTRUCTION,
                success=bool(flags[-1]),
                success_per_step=flags,
            ),
            task_index=0,
        )
    writer.finalize([INSTRUCTION])
    return root


def quick_optim(steps: int, lr: float, batch: int = 16):
    from train.loop import OptimConfig

    return OptimConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=5, min_lr_ratio=0.1,
                       ema_decay=0.0, checkpoint_every=10**6, log_every=50)  # fmt: skip


@pytest.fixture(scope="module")
def labelled_bundle(labelled_dataset, tmp_path_factory):
    """A tiny bundle on the labelled data: VAE 32x32 -> 4x4x4 (10 steps), 1-layer DiT (40 steps)."""
    from train.stage_dynamics import DynamicsStageConfig, run_dynamics_stage
    from train.stage_encoder import EncoderStageConfig, run_encoder_stage
    from wm_env.dataset.split import DataConfig

    base = tmp_path_factory.mktemp("labelled_bundle")
    bundle, data = base / "bundle", DataConfig(dataset=labelled_dataset)
    torch.manual_seed(0)
    run_encoder_stage(
        EncoderStageConfig(bundle=bundle, data=data, image_size=SIZE, latent_channels=4,
                           downsample=8, base_channels=8, optim=quick_optim(10, 3e-3, 8),
                           run_dir=base / "runs" / "encoder"),
        progress=False,
    )  # fmt: skip
    torch.manual_seed(0)
    run_dynamics_stage(
        DynamicsStageConfig(bundle=bundle, data=data, preset=None, hidden=32, depth=1, heads=2,
                            patch_size=1, num_steps=2, optim=quick_optim(40, 3e-3),
                            run_dir=base / "runs" / "dynamics"),
        progress=False,
    )  # fmt: skip
    return bundle


def tiny_probe_config(bundle, dataset, base, steps: int, **overrides):
    """A small probe on the labelled data, written to ``base/probe`` (run dir ``base/run``)."""
    from train.stage_probe import ProbeStageConfig
    from wm_env.dataset.split import DataConfig

    return ProbeStageConfig(
        bundle=bundle,
        out=base / "probe",
        data=DataConfig(dataset=dataset, val_fraction=0.25),
        probe=ProbeConfig(num_frames=4, hidden=32, heads=2, dropout=0.0),
        optim=quick_optim(steps, 3e-3, 32),
        run_dir=base / "run",
        **overrides,
    )


@pytest.fixture(scope="module")
def trained_probe(labelled_bundle, labelled_dataset, tmp_path_factory):
    from train.stage_probe import run_probe_stage

    base = tmp_path_factory.mktemp("probe")
    config = tiny_probe_config(labelled_bundle, labelled_dataset, base, 150)
    return run_probe_stage(config, progress=False)


# ---------------------------------------------------------------------- pieces
def test_uniform_frame_indices_spread_over_the_episode_with_both_ends():
    assert uniform_frame_indices(43, 8).tolist() == [0, 6, 12, 18, 24, 30, 36, 42]
    assert uniform_frame_indices(3, 4).tolist() == [0, 1, 1, 2]  # short episodes repeat frames
    assert uniform_frame_indices(1, 8).tolist() == [0] * 8
    with pytest.raises(ValueError, match="num_frames >= 1"):
        uniform_frame_indices(0, 8)


def test_training_frame_samples_are_jittered_sorted_and_keep_the_ends():
    from train.stage_probe import sample_frames

    rng = np.random.default_rng(0)
    ends = np.array([43, 10, 3, 1])
    rows = sample_frames(rng, ends, 8)
    assert rows.shape == (4, 8)
    assert (rows[:, 0] == 0).all() and (rows[:, -1] == ends - 1).all()
    assert (np.diff(rows, axis=1) >= 0).all() and (rows <= (ends - 1)[:, None]).all()
    plain = sample_frames(rng, ends, 8, jitter=False)
    assert [p.tolist() for p in plain] == [uniform_frame_indices(e, 8).tolist() for e in ends]
    jittered = np.stack([sample_frames(np.random.default_rng(s), ends[:1], 8)[0] for s in range(5)])
    assert len({tuple(r) for r in jittered}) > 1  # the augmentation moves inner frames


def test_instruction_slots_come_from_our_templates_and_are_none_for_the_rest():
    push = instruction_ids("push the red cube to the left")
    assert describe_instruction_ids(push) == "family=push color=red direction=left"
    place = instruction_ids("Put the blue cube into the green bin.")
    assert describe_instruction_ids(place) == "family=place color=blue color2=green"
    stack = instruction_ids("stack the yellow cube on the red cube", mode="family")
    assert describe_instruction_ids(stack) == "family=stack"
    assert instruction_ids("please tidy the table").tolist() == [0, 0, 0, 0]
    assert instruction_ids("lift the red cube", mode="none").tolist() == [0, 0, 0, 0]


def test_probe_forward_shapes_and_bad_latents():
    probe = SuccessProbe(ProbeConfig(num_frames=4, hidden=32, heads=2), grid=(4, 4), channels=4)
    ids = torch.tensor([[0, 0, 0, 0], [1, 2, 0, 0], [3, 1, 0, 4]])
    logits = probe(torch.randn(3, 4, 16, 4), ids)
    assert logits.shape == (3,)
    with pytest.raises(ValueError, match=r"\(B, 4, 16, 4\)"):
        probe(torch.randn(3, 5, 16, 4), ids)
    logits, per_frame = probe(torch.randn(3, 4, 16, 4), ids, per_frame=True)
    assert logits.shape == (3,) and per_frame.shape == (3, 4)
    linear = SuccessProbe(ProbeConfig(num_frames=4, hidden=32, heads=2, frame_encoder="linear"),
                          grid=(4, 4), channels=4)  # fmt: skip
    assert linear(torch.randn(2, 4, 16, 4), ids[:2]).shape == (2,)
    with pytest.raises(ValueError, match="divisible"):
        ProbeConfig(hidden=30, heads=4)
    with pytest.raises(KeyError, match="did you mean 'conv'"):
        ProbeConfig(frame_encoder="cnv")


def test_binary_metrics_against_hand_counts():
    from judges.calibrate import binary_metrics, score_verdicts

    m = binary_metrics([True, True, False, False, True], [True, False, False, True, True])
    assert m == {"n": 5, "positives": 3, "negatives": 2, "accuracy": 0.6, "tpr": 2 / 3, "fpr": 0.5,
                 "true_positives": 2, "false_positives": 1}  # fmt: skip
    assert np.isnan(binary_metrics([False], [False])["tpr"])  # no positives: undefined, not 0
    scored = score_verdicts(
        [Verdict(True, 1.0), Verdict.abstain("down"), Verdict(False, 0.0)],
        [True, True, True],
        [1.0, 2.0, 3.0],
    )
    assert scored["abstained"] == 1 and scored["n"] == 2 and scored["accuracy"] == 0.5
    assert scored["seconds_per_verdict"] == 2.0


# ---------------------------------------------------------------------- trained probe
def test_trained_probe_separates_the_labels_and_records_its_provenance(
    trained_probe, labelled_bundle
):
    from judges.probe import ProbeJudge
    from wm_env.bundle import latent_space_hashes, read_config

    section = read_config(trained_probe)["probe"]
    assert section["encoder_sha256"] == latent_space_hashes(read_config(labelled_bundle))
    assert section["metrics"]["train"]["accuracy"] >= 0.9
    assert section["metrics"]["val"]["n"] == 8  # 25% of 32 episodes held out
    judge = ProbeJudge.from_pretrained(trained_probe)  # finds the bundle from the record
    assert judge.name == f"probe:{trained_probe.name}"
    assert judge.prompt_hash == read_config(trained_probe)["files"]["probe.safetensors"]["sha256"]
    right = np.stack([render(12 + 2 * t, 16) for t in range(8)])  # ends at x = 26: success
    left = np.stack([render(20 - 2 * t, 16) for t in range(8)])  # ends at x = 6: failure
    yes, no = judge.judge(right, INSTRUCTION), judge.judge(left, INSTRUCTION)
    assert yes.success is True and no.success is False and yes.score > no.score
    assert judge.judge(right, INSTRUCTION) == yes  # deterministic
    assert "family=push color=red direction=right" in yes.rationale
    assert judge.judge(right[:1], INSTRUCTION).success is False  # first frame: still left (x 12)

    class Video:  # a lazily decoded video (benchmarks' LazyFrames): records what is read
        def __init__(self, frames):
            self.frames, self.read = frames, []

        def __len__(self):
            return len(self.frames)

        def __getitem__(self, index):
            self.read.append(np.arange(len(self.frames))[index])
            return self.frames[index]

    long = np.concatenate([right, np.repeat(right[-1:], 32, axis=0)])  # 40 frames
    video = Video(long)
    assert judge.judge(video, INSTRUCTION) == judge.judge(long, INSTRUCTION)
    assert len(video.read) == 1 and len(video.read[0]) == judge.probe.config.num_frames < 40


def test_probe_trains_on_world_model_replays_labelled_by_the_recorded_episode(
    labelled_bundle, labelled_dataset, tmp_path
):
    from safetensors import safe_open

    from train.stage_probe import episode_labels, replay_arrays, run_probe_stage
    from wm_env.bundle import bundle_sha256, read_config, update_config
    from wm_env.dataset.lerobot import LeRobotDataset
    from wm_env.dataset.split import load_split

    world_model = shutil.copytree(labelled_bundle, tmp_path / "wm")
    config = tiny_probe_config(
        labelled_bundle, labelled_dataset, tmp_path, 20,
        replay_bundle=world_model, replay_episodes=10, replay_batch=4,
    )  # fmt: skip
    section = read_config(run_probe_stage(config, progress=False))["probe"]
    assert section["replays"] == {
        "bundle": str(world_model),
        "bundle_sha256": bundle_sha256(world_model),
        "episodes": 10,
        "inputs": "frames",
        "num_steps": None,
        "dtype": None,
    }
    assert section["metrics"]["val_replay"]["n"] == section["metrics"]["val"]["n"] == 8
    # one latent cache entry per episode: 24 recorded + 10 replayed training, 8 + 8 held out
    with safe_open(str(tmp_path / "run" / "latents.safetensors"), framework="pt") as f:
        assert len(f.keys()) == 24 + 10 + 8 + 8
    # replays: one generated frame per recorded action, labelled by the recorded frames' flags
    _, train, _ = load_split(config.data, progress=False)
    flags = episode_labels(LeRobotDataset(labelled_dataset), train["episode_ids"], train["lengths"])
    replays, replay_flags = replay_arrays(
        config, train, flags, tmp_path / "run" / "replays_train.npz", limit=3, progress=False
    )
    assert replays["lengths"].tolist() == train["lengths"][:3].tolist()
    assert replays["frames"].shape == (int(train["lengths"][:3].sum()), SIZE, SIZE, 3)
    assert replay_flags.tolist() == flags[: int(train["lengths"][:3].sum())].tolist()
    # a changed world model is another input: the finished run is not reused for it
    update_config(
        world_model, dynamics={**read_config(world_model)["dynamics"], "temperature": 0.5}
    )
    with pytest.raises(ValueError, match="other inputs"):
        run_probe_stage(config, progress=False)


def test_probe_trains_on_the_world_models_own_latents_of_its_replays(
    labelled_bundle, labelled_dataset, tmp_path
):
    """``replay_inputs="latents"``: replays keep the model's latents (no decoding, no encoding),
    the probe records it and then reads latents by default."""
    from judges.calibrate import replay_actions
    from judges.probe import ProbeJudge
    from train.stage_probe import episode_labels, replay_arrays, run_probe_stage
    from wm_env.bundle import read_config
    from wm_env.dataset.lerobot import LeRobotDataset
    from wm_env.dataset.split import load_split
    from wm_env.world_model import WorldModel

    wm = WorldModel.from_pretrained(labelled_bundle)
    rng = np.random.default_rng(2)
    starts = np.stack([render(10, 16), render(22, 12), render(16, 20)])
    actions = [rng.uniform(-1, 1, (n, 7)).astype(np.float32) for n in (3, 5, 2)]
    latents = replay_actions(wm, starts, actions, seed=7, batch=2, latents=True)
    assert [r.shape for r in latents] == [(n + 1, *wm.latent_shape) for n in (3, 5, 2)]
    assert all(r.dtype == np.float32 for r in latents)
    # the same episodes stepped one at a time with decoding: the same latents
    wm.reset(starts[1:2], seed=8)  # episode 1 of the batch uses seed 7 + 1
    alone = [wm.unnormalize(wm.latest_latents)[0]]
    for a in actions[1]:
        wm.step(a[None])
        alone.append(wm.unnormalize(wm.latest_latents)[0])
    np.testing.assert_allclose(latents[1], torch.stack(alone).numpy(), atol=1e-4)
    np.testing.assert_allclose(latents[1][0], wm.unnormalize(wm.encode(starts[1:2]))[0], atol=1e-5)

    config = tiny_probe_config(
        labelled_bundle, labelled_dataset, tmp_path, 20, replay_bundle=labelled_bundle,
        replay_episodes=10, replay_batch=4, replay_inputs="latents",
        replay_wm=WorldModelOptions(num_steps=1, dtype="bf16"),
    )  # fmt: skip
    probe_dir = run_probe_stage(config, progress=False)
    section = read_config(probe_dir)["probe"]
    assert section["replays"]["inputs"] == "latents" and section["replays"]["episodes"] == 10
    assert (section["replays"]["num_steps"], section["replays"]["dtype"]) == (1, "bf16")
    assert section["metrics"]["val_replay"]["n"] == 8
    _, train, _ = load_split(config.data, progress=False)
    flags = episode_labels(LeRobotDataset(labelled_dataset), train["episode_ids"], train["lengths"])
    replays, _ = replay_arrays(
        config, train, flags, tmp_path / "run" / "replays_train.npz", limit=3, progress=False
    )
    assert "frames" not in replays
    assert replays["latents"].shape == (int(train["lengths"][:3].sum()), *wm.latent_shape)
    assert ProbeJudge.from_pretrained(probe_dir).inputs == "latents"  # as it was trained
    assert ProbeJudge.from_pretrained(probe_dir, inputs="frames").inputs == "frames"
    with pytest.raises(KeyError, match="did you mean 'latents'"):
        tiny_probe_config(labelled_bundle, labelled_dataset, tmp_path, 1, replay_inputs="latent")


def test_probe_judge_rejects_bad_input_and_a_changed_encoder(
    trained_probe, labelled_bundle, tmp_path
):
    from judges.probe import ProbeJudge
    from wm_env.bundle import BundleError, load_weights, read_config, write_component

    judge = ProbeJudge.from_pretrained(trained_probe)
    with pytest.raises(ValueError, match="uint8"):
        judge.judge(np.zeros((0, SIZE, SIZE, 3), np.uint8), INSTRUCTION)
    with pytest.raises(ValueError, match="uint8"):
        judge.judge(np.zeros((4, SIZE, SIZE, 3), np.float64), INSTRUCTION)
    with pytest.raises(ValueError, match="instruction"):
        judge.judge(np.zeros((4, SIZE, SIZE, 3), np.uint8), "")
    changed = tmp_path / "bundle"
    shutil.copytree(labelled_bundle, changed)
    config = read_config(changed)
    weights = {k: v + 0.01 for k, v in load_weights(changed, config, "encoder").items()}
    write_component(changed, "encoder", config["encoder"], weights)
    with pytest.raises(BundleError, match="other encoder/adapter weights"):
        ProbeJudge.from_pretrained(trained_probe, bundle=changed)
    with pytest.raises(BundleError, match="no success probe"):
        ProbeJudge.from_pretrained(labelled_bundle)


def test_probe_reading_latents_judges_a_world_model_video_without_decoding_it(
    trained_probe, labelled_bundle, monkeypatch, decode_calls
):
    """``inputs="latents"`` reads a lazy world-model video's latents (the encoder's, when they
    are a real episode's: then the verdict equals judging its frames) and decodes nothing; pixel
    videos, and latents of another latent space, are still encoded."""
    from benchmarks.lazy_frames import LazyFrames
    from judges.probe import ProbeJudge
    from judges.registry import load_judge
    from wm_env.world_model import WorldModel

    frames_judge = ProbeJudge.from_pretrained(trained_probe)
    judge = load_judge("probe", path=str(trained_probe), inputs="latents")
    assert judge.name == frames_judge.name + "+latents"
    assert judge.prompt_hash == frames_judge.prompt_hash
    wm = WorldModel.from_pretrained(labelled_bundle)
    decoded = decode_calls  # frames per WorldModel.decode call
    for frames in (  # a success (ends right) and a failure (ends left)
        np.stack([render(12 + 2 * t, 16) for t in range(12)]),
        np.stack([render(20 - 2 * t, 16) for t in range(12)]),
    ):
        video = LazyFrames(wm, frames[0], wm.encode(frames[1:]), None)  # no start latents
        lazy = judge.judge(video, INSTRUCTION)
        pixels = frames_judge.judge(frames, INSTRUCTION)
        assert decoded == [] and video.decoded == 1  # only the start frame, handed in
        assert lazy.success == pixels.success and lazy.score == pytest.approx(
            pixels.score, abs=1e-4
        )
        assert "world-model latents" in lazy.rationale and "frames sampled" in pixels.rationale
        # the start frame's latents, when handed in, are used as they are
        given = LazyFrames(
            wm, frames[0], video.latents, None, start_latents=wm.encode(frames[:1])[0]
        )
        assert judge.judge(given, INSTRUCTION).score == pytest.approx(lazy.score, abs=1e-5)
        # the frames judge decodes the sampled frames of the same video (the tiny autoencoder's
        # round trip can change the verdict: why the two ways are measured apart)
        frames_judge.judge(video, INSTRUCTION)
        assert sum(decoded) == judge.probe.config.num_frames - 1  # the start needs no decoding
        decoded.clear()
    # plain arrays (a sim video) have no latents: encoded as frames_judge does
    assert judge.judge(frames, INSTRUCTION).score == pytest.approx(pixels.score, abs=1e-6)
    # a world model of another latent space: its latents mean nothing to the probe
    video = LazyFrames(wm, frames[0], wm.encode(frames[1:]), None)
    monkeypatch.setattr(LazyFrames, "latent_space", property(lambda self: ["another encoder"]))
    assert "frames sampled" in judge.judge(video, INSTRUCTION).rationale and decoded
    with pytest.raises(KeyError, match="did you mean 'latents'"):
        load_judge("probe", path=str(trained_probe), inputs="latent")
    with pytest.raises(ValueError, match="instruction"):
        judge.judge(LazyFrames(wm, frames[0], video.latents, None), "")


# ---------------------------------------------------------------------- replays and calibration
def test_replays_follow_each_episodes_actions_whatever_the_batch(labelled_bundle):
    from judges.calibrate import replay_actions
    from wm_env.world_model import WorldModel

    wm = WorldModel.from_pretrained(labelled_bundle)
    rng = np.random.default_rng(1)
    starts = np.stack([render(10, 16), render(22, 12), render(16, 20)])
    actions = [rng.uniform(-1, 1, (n, 7)).astype(np.float32) for n in (3, 5, 2)]
    batched = replay_actions(wm, starts, actions, seed=7, batch=2)
    assert [r.shape for r in batched] == [
        (4, SIZE, SIZE, 3),
        (6, SIZE, SIZE, 3),
        (3, SIZE, SIZE, 3),
    ]
    alone = wm.reset(starts[1:2], seed=8)  # episode 1 of the batch uses seed 7 + 1
    frames = [alone] + [wm.step(a[None]) for a in actions[1]]
    single = np.concatenate(frames)
    assert np.abs(single.astype(int) - batched[1].astype(int)).max() <= 1


def test_calibrate_scores_judges_on_real_episodes_and_replays(
    trained_probe, labelled_bundle, labelled_dataset, tmp_path, monkeypatch
):
    from judges.calibrate import CalibrateConfig, calibrate
    from judges.probe import ProbeJudge
    from wm_env.dataset.split import DataConfig

    class AlwaysYes:
        name = "always-yes"

        def judge(self, frames, instruction):
            check_judge_input(frames, instruction)
            return Verdict(True, 0.9, "yes")

    config = CalibrateConfig(judge=(str(trained_probe),), bundle=labelled_bundle, out=tmp_path / "cal",
                             data=DataConfig(dataset=labelled_dataset, val_fraction=0.25))  # fmt: skip
    judges = [ProbeJudge.from_pretrained(trained_probe), AlwaysYes()]
    results = calibrate(config, judges=judges, progress=False)
    rows = list(csv.DictReader((config.out / "verdicts.csv").open()))
    assert len(rows) == 3 * 2 * 8  # (probe, always-yes, their majority) x (real, replay) x 8
    by_key = {(s["judge"], s["source"]): s for s in results["summary"]}
    for (name, source), s in by_key.items():
        mine = [r for r in rows if r["judge"] == name and r["source"] == source]
        labels = np.array([r["label"] == "True" for r in mine])
        said = np.array([r["success"] == "True" for r in mine])
        assert s["accuracy"] == pytest.approx(np.mean(said == labels))
    yes_real = by_key[("always-yes", "real")]
    assert yes_real["tpr"] == 1.0 and yes_real["fpr"] == 1.0
    assert yes_real["positives"] == sum(r["label"] == "True" for r in rows) // 6
    assert by_key[(f"probe:{trained_probe.name}", "real")]["accuracy"] >= 0.75
    assert by_key[(f"probe:{trained_probe.name}", "real")]["seconds_per_verdict"] > 0
    assert set(results["agreement"]) == {"real", "replay"}
    saved = json.loads((config.out / "calibration.json").read_text())
    assert saved["judges"][0]["kind"] == "ProbeJudge" and len(saved["episodes"]) == 8
    assert "| always-yes |" in (config.out / "calibration.md").read_text()

    # A second run reuses the cached replays: the world model is not even loaded.
    import wm_env.world_model

    def no_model(*args, **kwargs):
        raise AssertionError("replays should come from the cache")

    monkeypatch.setattr(wm_env.world_model.WorldModel, "from_pretrained", no_model)
    again = calibrate(config, judges=judges, progress=False)
    keys = ("judge", "source", "n", "abstained", "accuracy", "tpr", "fpr")
    assert [[a[k] for k in keys] for a in again["summary"]] == [
        [b[k] for k in keys] for b in results["summary"]
    ]


def test_calibrate_judges_replays_on_the_models_latents_for_a_latent_probe(
    trained_probe, labelled_bundle, labelled_dataset, tmp_path
):
    """A probe reading latents is calibrated on what a leaderboard hands it: the world model's
    latents of its replays (no decoding); the same probe reading frames gets the pixel replays."""
    from judges.calibrate import CalibrateConfig, ReplayLatents, calibrate
    from judges.probe import ProbeJudge
    from wm_env.dataset.split import DataConfig

    config = CalibrateConfig(judge=(str(trained_probe),), bundle=labelled_bundle, out=tmp_path / "cal",
                             data=DataConfig(dataset=labelled_dataset, val_fraction=0.25),
                             episodes=3)  # fmt: skip
    judges = [ProbeJudge.from_pretrained(trained_probe, inputs="latents"),
              ProbeJudge.from_pretrained(trained_probe)]  # fmt: skip
    calibrate(config, judges=judges, progress=False)
    rows = list(csv.DictReader((config.out / "verdicts.csv").open()))
    read = {(r["judge"], r["source"]): r["rationale"] for r in rows}
    latent_name, frames_name = judges[0].name, judges[1].name
    assert "world-model latents" in read[(latent_name, "replay")]
    assert "frames sampled" in read[(latent_name, "real")]  # sim videos have no latents
    assert "frames sampled" in read[(frames_name, "replay")]
    assert (config.out / "replays_latents.npz").exists()
    replay = ReplayLatents(np.zeros((4, 2, 3), np.float32), ["abc"])
    assert len(replay) == 4 and replay.raw_latents([0, 3]).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="latents only"):
        replay[0]


def test_cli_trains_a_probe_and_calibrates_it(labelled_bundle, labelled_dataset, tmp_path, capsys):
    from wmgym.cli import main

    probe = tmp_path / "probe"
    main(["train", "probe", "--bundle", str(labelled_bundle), "--out", str(probe),
          "--data.dataset", str(labelled_dataset), "--data.val-fraction", "0.25",
          "--probe.num-frames", "4", "--probe.hidden", "32", "--probe.heads", "2",
          "--optim.steps", "5", "--optim.batch-size", "8", "--run-dir", str(tmp_path / "run")])  # fmt: skip
    assert (probe / "probe.safetensors").exists()
    main(["judge", "calibrate", "--judge", str(probe), "--no-replay",
          "--data.dataset", str(labelled_dataset), "--data.val-fraction", "0.25",
          "--episodes", "3", "--out", str(tmp_path / "cal")])  # fmt: skip
    out = capsys.readouterr().out
    assert (
        "| judge | episodes |" in out and "real" in out and "replay" not in out.split("| judge")[1]
    )
    summary = list(csv.DictReader((tmp_path / "cal" / "summary.csv").open()))
    assert len(summary) == 1 and summary[0]["episodes"] == "3"
    with pytest.raises(SystemExit):
        main(
            [
                "judge",
                "calibrate",
                "--judge",
                str(tmp_path / "nowhere"),
                "--data.dataset",
                str(labelled_dataset),
            ]
        )
    assert "not a probe or read-out directory" in capsys.readouterr().err


def test_load_judge_detects_probes_urls_and_rejects_the_rest(trained_probe, tmp_path):
    from judges.openai_client import OpenAIJudge
    from judges.probe import ProbeJudge
    from judges.registry import load_judge

    assert isinstance(load_judge(str(trained_probe)), ProbeJudge)
    assert load_judge("probe", path=str(trained_probe), threshold=0.9).threshold == 0.9
    served = load_judge("http://127.0.0.1:9/v1", model="qwen", prompt={"stride": 2})
    assert isinstance(served, OpenAIJudge) and served.config.prompt.stride == 2
    with pytest.raises(KeyError, match="did you mean 'probe'"):
        load_judge("prbe", path=str(trained_probe))
    with pytest.raises(KeyError, match="did you mean 'threshold'"):
        load_judge(str(trained_probe), treshold=0.9)
    with pytest.raises(ValueError, match="needs model="):
        load_judge("http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="not a probe or read-out directory"):
        load_judge(str(tmp_path))


def test_calibrate_save_stores_the_replay_rates_where_leaderboards_find_them(
    trained_probe, labelled_bundle, labelled_dataset, tmp_path
):
    import shutil

    from judges.calibrate import CalibrateConfig, calibrate
    from judges.correction import find_calibration
    from judges.probe import ProbeJudge
    from wm_env.bundle import run_config_sha256
    from wm_env.dataset.split import DataConfig

    probe = shutil.copytree(trained_probe, tmp_path / "probe")
    config = CalibrateConfig(judge=(str(probe),), bundle=labelled_bundle, out=tmp_path / "cal",
                             data=DataConfig(dataset=labelled_dataset, val_fraction=0.25),
                             save=True)  # fmt: skip
    judge = ProbeJudge.from_pretrained(probe)
    results = calibrate(config, judges=[judge], progress=False)
    assert results["saved"] == [str(probe / "calibration.json")]
    replay = next(s for s in results["summary"] if s["source"] == "replay")
    found, note = find_calibration(
        probe, judge.prompt_hash, run_config_sha256(labelled_bundle), judge.name
    )
    assert found is not None and found.positives == replay["positives"]
    assert found.tpr == pytest.approx(replay["tpr"]) and found.fpr == pytest.approx(replay["fpr"])
    assert "replays of held-out episodes" in note
    with pytest.raises(ValueError, match="--replay"):
        calibrate(dataclasses.replace(config, replay=False), judges=[judge], progress=False)
