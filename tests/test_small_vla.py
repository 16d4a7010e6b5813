"""The small VLA: action bins, vocabulary, checkpoints, the policy interface and its training stage.

Training runs on a synthetic dataset (no simulator): 16x16 frames with a red and a blue square;
the instruction names one, and the demonstrated action points at it (dx, dy) and closes the
gripper from step 2 on. Failed episodes carry random actions, so cloning them would hurt.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from policies.action_bins import ActionBins
from policies.base import Policy
from policies.small_vla import SmallVLA, SmallVLAConfig, SmallVLAPolicy, Vocabulary
from train.loop import OptimConfig, RuntimeConfig
from train.stage_policy import (
    PolicyDataConfig,
    PolicyStageConfig,
    gather_batch,
    load_demonstrations,
    random_shift,
    run_policy_stage,
)
from wm_env.errors import CorruptFileError

SIZE, STEPS = 16, 5
COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
TINY = SmallVLAConfig(
    image_size=SIZE,
    channels=(8, 16, 16),
    keypoints=8,
    grid=4,
    grid_channels=4,
    text_dim=16,
    hidden=64,
    head_hidden=32,
    chunk=3,
    execute=2,
    time_input=True,  # the frames are static: only the step count says when to close
    max_steps=STEPS,  # the step input spans [0, 1] over these short episodes
)


def squares_frame(positions: dict[str, tuple[int, int]]) -> np.ndarray:
    """uint8 (16, 16, 3): grey background, a 3x3 square of each colour centred at (x, y)."""
    frame = np.full((SIZE, SIZE, 3), 90, np.uint8)
    for color, (x, y) in positions.items():
        frame[y - 1 : y + 2, x - 1 : x + 2] = COLORS[color]
    return frame


def expert_action(positions: dict[str, tuple[int, int]], color: str, step: int) -> np.ndarray:
    action = np.zeros(7, np.float32)
    x, y = positions[color]
    action[0], action[1] = (x - 7.5) / 6.5, (y - 7.5) / 6.5
    action[6] = 1.0 if step >= 2 else -1.0
    return action


def random_layout(rng: np.random.Generator) -> dict[str, tuple[int, int]]:
    while True:
        xy = rng.integers(1, SIZE - 1, (2, 2))
        if np.abs(xy[0] - xy[1]).max() >= 4:
            return {"red": tuple(xy[0]), "blue": tuple(xy[1])}


@pytest.fixture(scope="module")
def squares_dataset(tmp_path_factory) -> Path:
    """40 successful 'touch the <color> square' episodes and 8 failed ones (random actions)."""
    from wm_env.dataset.lerobot import LeRobotWriter
    from wm_env.dataset.record import EpisodeRecord

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("squares") / "dataset"
    writer = LeRobotWriter(root, fps=5)
    tasks = [f"touch the {c} square" for c in COLORS]
    for episode in range(48):
        color = ("red", "blue")[episode % 2]
        layout = random_layout(rng)
        success = episode < 40
        if success:
            actions = np.stack([expert_action(layout, color, t) for t in range(STEPS)])
        else:
            actions = rng.uniform(-1, 1, (STEPS, 7)).astype(np.float32)
        writer.write_episode(
            EpisodeRecord(
                episode_index=episode,
                frames={"image": np.stack([squares_frame(layout)] * (STEPS + 1))},
                actions=actions,
                states=np.zeros((STEPS + 1, 8), np.float32),
                instruction=tasks[episode % 2],
                success=success,
                success_per_step=np.full(STEPS + 1, success),
                meta={"family": "lift", "quality_level": 1.0 if success else 0.0},
            ),
            task_index=episode % 2,
        )
    writer.finalize(tasks)
    return root


def tiny_stage(dataset: Path, tmp_path: Path, **overrides) -> PolicyStageConfig:
    settings = dict(
        out=tmp_path / "policy",
        data=PolicyDataConfig(dataset=dataset),
        model=TINY,
        shift=1,
        label_sigma=20.0,  # 40 layouts: neighbouring bins must share what they learn
        optim=OptimConfig(
            steps=300,
            batch_size=32,
            lr=3e-3,
            warmup_steps=20,
            min_lr_ratio=0.1,
            ema_decay=0.0,
            checkpoint_every=10**6,
            log_every=50,
        ),
        runtime=RuntimeConfig(threads=1),
        run_dir=tmp_path / "run",
    )
    settings.update(overrides)
    return PolicyStageConfig(**settings)


# ----------------------------------------------------------------------------- pieces


def test_action_bins_round_trip_and_soft_targets():
    bins = ActionBins()
    actions = torch.linspace(-1.0, 1.0, 1001)
    index = bins.encode(actions)
    assert index.min() == 0 and index.max() == 255
    assert (bins.decode(index) - actions).abs().max() <= bins.width / 2 + 1e-6
    assert bins.encode(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]  # out of range: end bins
    soft = bins.soft_targets(torch.tensor([0.3]), sigma=2.0)
    assert soft.shape == (1, 256) and torch.allclose(soft.sum(-1), torch.ones(1))
    assert soft.argmax(-1) == bins.encode(torch.tensor([0.3]))
    assert torch.equal(bins.soft_targets(torch.tensor([0.3]), 0.0).argmax(-1), soft.argmax(-1))
    with pytest.raises(ValueError, match="num_bins"):
        ActionBins(num_bins=1)


def test_vocabulary_unknown_words_padding_and_order():
    vocab = Vocabulary.build(["stack the red cube on the blue cube", "lift the red cube"])
    assert vocab.tokens[:2] == ["<pad>", "<unk>"]
    ids = vocab.encode(["Stack the RED cube on the purple cube!"], max_words=10)[0]
    assert ids[6].item() == 1 and ids[2].item() > 1  # "purple" was never seen; "red" was
    assert ids[8:].tolist() == [0, 0]  # padding
    a, b = vocab.encode(
        ["stack the red cube on the blue cube", "stack the blue cube on the red cube"], 8
    )
    assert not torch.equal(a, b) and sorted(a.tolist()) == sorted(b.tolist())
    with pytest.raises(ValueError, match="without words"):
        Vocabulary.build(["!!"])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="execute"):
        SmallVLAConfig(chunk=2, execute=3)
    with pytest.raises(ValueError, match="image_size"):
        SmallVLAConfig(image_size=30)
    with pytest.raises(ValueError, match="unknown SmallVLAConfig fields"):
        SmallVLAConfig.from_dict({"chunks": 3})


def test_policy_interface_save_load_and_bad_input(tmp_path):
    torch.manual_seed(0)
    vocab = Vocabulary.build(["touch the red square", "touch the blue square"])
    policy = SmallVLAPolicy(SmallVLA(TINY, len(vocab)), vocab, name="tiny")
    assert isinstance(policy, Policy)
    obs = {
        "image": squares_frame({"red": (4, 4), "blue": (11, 11)}),
        "instruction": "touch the red square",
    }
    policy.reset(obs["instruction"])
    actions = policy.act(obs)
    assert actions.shape == (TINY.execute, 7) and actions.dtype == np.float32
    assert np.abs(actions).max() <= 1.0
    big = {**obs, "image": np.repeat(np.repeat(obs["image"], 4, 0), 4, 1)}  # 64x64: resized
    assert policy.act(big).shape == (TINY.execute, 7)

    policy.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["type"] == "small_vla" and config["dtype"] == "fp32"  # one dtype vocabulary
    loaded = SmallVLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert loaded.name == "tiny" and loaded.vocab.tokens == vocab.tokens
    images = np.stack([obs["image"]] * 3)
    np.testing.assert_array_equal(
        loaded.predict(images, [obs["instruction"]] * 3),
        policy.predict(images, [obs["instruction"]] * 3),
    )

    for bad in (
        {"instruction": "touch the red square"},
        {"image": obs["image"].astype(np.float32), "instruction": "x"},
        {"image": obs["image"][..., 0], "instruction": "x"},
        {"image": obs["image"], "instruction": ""},
    ):
        with pytest.raises(ValueError):
            policy.act(bad)
    with pytest.raises(ValueError, match="instruction"):
        policy.reset("")

    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        SmallVLAPolicy.from_pretrained(tmp_path / "ckpt")
    config["type"] = "openvla"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not 'small_vla'"):
        SmallVLAPolicy.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="config.json is missing"):
        SmallVLAPolicy.from_pretrained(tmp_path / "nowhere")


def test_policy_tracks_its_gripper_steps_and_first_frame():
    torch.manual_seed(0)
    vocab = Vocabulary.build(["touch the red square"])
    policy = SmallVLAPolicy(SmallVLA(TINY, len(vocab)), vocab)
    seen = []

    def predict(images, texts, gripper, step, first):  # record the state it feeds
        seen.append((float(gripper[0]), float(step[0]), int(first[0, 0, 0, 0])))
        return np.ones((1, TINY.chunk, 7), np.float32)

    policy.predict = predict
    frames = [np.full((16, 16, 3), value, np.uint8) for value in (10, 20, 30, 40)]
    text = "touch the red square"
    policy.reset(text)
    for frame in frames[:3]:
        policy.act({"image": frame, "instruction": text})
    policy.reset(text)
    policy.act({"image": frames[3], "instruction": text})
    assert seen == [(-1.0, 0.0, 10), (1.0, 2.0, 10), (1.0, 4.0, 10), (-1.0, 0.0, 40)]


def test_batches_mask_chunks_at_episode_ends(squares_dataset, tmp_path):
    demos = load_demonstrations(
        PolicyDataConfig(dataset=squares_dataset), SIZE, tmp_path, progress=False
    )
    assert len(demos.episode_ids) == 40 and demos.frames.shape == (40 * (STEPS + 1), SIZE, SIZE, 3)
    rows = torch.tensor([0, 3, 4, 6])  # episode 0 steps 0, 3, 4; episode 1 step 0
    batch = gather_batch(demos, rows, chunk=3)
    assert batch["mask"].tolist() == [
        [True] * 3,
        [True, True, False],
        [True, False, False],
        [True] * 3,
    ]
    assert batch["gripper"].tolist() == [-1.0, 1.0, 1.0, -1.0]  # the previous action's gripper
    assert batch["step"].tolist() == [0.0, 3.0, 4.0, 0.0]
    assert batch["first"].tolist() == [0, 0, 0, 6]  # rows of the episodes' first frames
    torch.testing.assert_close(batch["targets"][1, :2], demos.actions[3:5])
    assert len(list(tmp_path.glob("frames-*.safetensors"))) == 1  # decoded once, cached
    both = load_demonstrations(
        PolicyDataConfig(dataset=(squares_dataset, squares_dataset)), SIZE, tmp_path, progress=False
    )  # several datasets are laid out one after the other
    assert len(both.episode_ids) == 80 and both.sources[40] == str(squares_dataset)
    assert both.episode_end[len(demos.valid)].item() == len(demos.valid) + STEPS + 1
    images = torch.rand(4, 3, SIZE, SIZE)
    shifted = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and not torch.equal(shifted, images)
    torch.testing.assert_close(random_shift(images, 0, torch.Generator()), images)


def test_stage_rejects_bad_input(squares_dataset, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        run_policy_stage(tiny_stage(tmp_path / "missing", tmp_path), progress=False)
    with pytest.raises(KeyError, match="did you mean 'push'"):
        PolicyDataConfig(families=("psuh",))
    with pytest.raises(ValueError, match="no episode of .* qualifies"):
        run_policy_stage(
            tiny_stage(
                squares_dataset,
                tmp_path,
                data=PolicyDataConfig(dataset=squares_dataset, families=("push",)),
            ),
            progress=False,
        )
    with pytest.raises(ValueError, match="snapshot_steps"):
        tiny_stage(squares_dataset, tmp_path, snapshot_steps=(300,))
    with pytest.raises(KeyError, match="camera"):
        load_demonstrations(PolicyDataConfig(dataset=squares_dataset, camera="wrist"), SIZE, None)


# ----------------------------------------------------------------------------- training


def test_training_learns_to_point_at_the_named_square(squares_dataset, tmp_path):
    """600 steps: the cloned policy points at the named square on unseen layouts.

    At 300 steps the pointing error and the gripper timing varied across seeds around the
    thresholds (one seed: error 0.31, gripper right in 68%); at 600 all of 6 seeds pass with margin
    (error <= 0.18, gripper right in 100%), so another machine's float order cannot flip it.
    """
    torch.manual_seed(0)
    config = tiny_stage(squares_dataset, tmp_path, snapshot_steps=(20,))
    config = dataclasses.replace(config, optim=dataclasses.replace(config.optim, steps=600))
    out = run_policy_stage(config, progress=False)
    policy = SmallVLAPolicy.from_pretrained(out)
    early = SmallVLAPolicy.from_pretrained(tmp_path / "policy-step20")
    assert policy.info["steps"] == 600 and early.info["steps"] == 20
    assert policy.info["episodes"] == 40  # the failed episodes were left out

    rng = np.random.default_rng(1)
    layouts = [random_layout(rng) for _ in range(40)]
    colors = [("red", "blue")[i % 2] for i in range(40)]
    images = np.stack([squares_frame(layout) for layout in layouts])
    texts = [f"touch the {c} square" for c in colors]
    truth = np.stack([expert_action(lay, c, 0)[:2] for lay, c in zip(layouts, colors, strict=True)])

    def error(p: SmallVLAPolicy) -> float:
        return float(np.abs(p.predict(images, texts)[:, 0, :2] - truth).mean())

    trained, untrained = error(policy), error(early)
    assert trained < 0.25 and trained < 0.5 * untrained, (trained, untrained)
    # the instruction matters: naming the other square moves the action
    swapped = [f"touch the {'blue' if c == 'red' else 'red'} square" for c in colors]
    assert np.abs(policy.predict(images, swapped)[:, 0, :2] - truth).mean() > 2 * trained
    # gripper: open at the start, closed once the step count reaches 2
    chunk = policy.predict(images[:8], texts[:8], np.full(8, -1.0), np.zeros(8))
    assert (chunk[:, 0, 6] < 0).mean() >= 0.75 and (chunk[:, 2, 6] > 0).mean() >= 0.75

    # re-running the finished run resumes it: no more steps, same weights
    again = SmallVLAPolicy.from_pretrained(run_policy_stage(config, progress=False))
    np.testing.assert_array_equal(again.predict(images, texts), policy.predict(images, texts))


def test_cli_trains_a_policy(squares_dataset, tmp_path):
    from wmgym.cli import main

    out = tmp_path / "cli-policy"
    main(
        [
            "train", "policy",
            "--data.dataset", str(squares_dataset),
            "--out", str(out),
            "--run-dir", str(tmp_path / "run"),
            "--model.image-size", "16",
            "--model.channels", "4", "8",
            "--model.hidden", "16",
            "--model.head-hidden", "8",
            "--model.chunk", "2",
            "--model.execute", "1",
            "--optim.steps", "3",
            "--optim.batch-size", "4",
        ]
    )  # fmt: skip
    assert SmallVLAPolicy.from_pretrained(out).info["steps"] == 3


def test_temporal_ensembling_averages_the_chunks_that_predicted_a_step(tmp_path):
    torch.manual_seed(0)
    vocab = Vocabulary.build(["touch the red square"])
    policy = SmallVLAPolicy(SmallVLA(TINY, len(vocab)), vocab, ensemble=0.0)
    calls = iter(range(100))

    def predict(images, texts, gripper, step, first):  # chunk n says "n + 0.1 * i" for step i
        n = next(calls)
        chunk = n + 0.1 * np.arange(TINY.chunk, dtype=np.float32)[:, None] * np.ones(7)
        chunk[:, 6] = 0.3 if n % 2 else -0.3
        return chunk[None].astype(np.float32) / 10

    policy.predict = predict
    obs = {"image": np.zeros((16, 16, 3), np.uint8), "instruction": "touch the red square"}
    policy.reset(obs["instruction"])
    first, second, third, fourth = (policy.act(obs) for _ in range(4))
    assert first.shape == (1, 7)
    np.testing.assert_allclose(first[0, :6], 0.0, atol=1e-6)
    np.testing.assert_allclose(
        second[0, :6], (0.01 + 0.1) / 2, atol=1e-6
    )  # chunk 0 step 1, chunk 1 step 0
    np.testing.assert_allclose(third[0, :6], (0.02 + 0.11 + 0.2) / 3, atol=1e-6)  # 3 chunks
    np.testing.assert_allclose(fourth[0, :6], (0.12 + 0.21 + 0.3) / 3, atol=1e-6)  # chunk 0 expired
    assert first[0, 6] == -1.0 and second[0, 6] in (-1.0, 1.0)  # the gripper stays binary
    policy.save_pretrained(tmp_path / "ens")
    assert SmallVLAPolicy.from_pretrained(tmp_path / "ens").ensemble == 0.0
    with pytest.raises(ValueError, match="ensemble"):
        SmallVLAPolicy(SmallVLA(TINY, len(vocab)), vocab, ensemble=-1.0)
