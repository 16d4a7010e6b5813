"""``wmgym train probe``: the success probe (:mod:`judges.probe`) on a bundle's frozen latents.

Episodes of a labelled LeRobot dataset (per-episode ``success`` and per-frame ``next.success``,
as ``wmgym data collect`` writes) are split as in every stage (``--data.val-fraction``,
``--data.split-seed``). Frames are encoded once with the bundle's encoder (+ adapter) and cached
on disk. Each training sample is one episode, or with probability ``prefix_fraction`` its first
``t`` frames (label: the success predicate at frame ``t - 1``, so the probe judges "succeeded by
the last frame shown", as :class:`wm_env.wrappers.JudgeWrapper` asks mid-episode); the
``num_frames`` frames are spread uniformly over it with random jitter (first and last kept).
The instruction's slots are all set to ``none`` with probability ``instruction_dropout``. Loss:
binary cross-entropy on the episode's label (the CLS output) plus ``frame_loss_weight`` times
that of each sampled frame's output against the predicate at that frame. The probe is written to ``out`` with the bundle API, with its accuracy,
TPR and FPR on the held-out episodes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from judges.probe import (
    INPUTS,
    PROBE_SECTION,
    ProbeConfig,
    SuccessProbe,
    instruction_ids,
    probe_section,
    uniform_frame_indices,
)
from train.latent_cache import cached_episode_latents
from train.loop import OptimConfig, RuntimeConfig, Trainer, batch_rng, config_dict, pin_run_inputs
from train.stage_dynamics import encode_frames
from wm_env.bundle import bundle_sha256, latent_space_hashes, read_config, write_component
from wm_env.dataset.split import DataConfig, dataset_fingerprint, load_split
from wm_env.options import WorldModelOptions
from wm_env.world_model import build_adapter_from_config, build_encoder_from_config


@dataclass(frozen=True)
class ProbeStageConfig:
    """Train a success probe on a bundle's encoder latents of labelled sim episodes.

    Attributes:
        bundle: the world-model bundle whose encoder (+ adapter) defines the latents.
        out: the probe directory to write (``config.json`` + ``probe.safetensors``).
        probe: probe architecture.
        prefix_fraction: share of samples cut at a random frame (labelled by the predicate there).
        instruction_dropout: share of samples whose instruction slots are hidden (trains the
            ``none`` embeddings that instructions outside our templates get).
        frame_loss_weight: weight of the auxiliary loss on per-frame outputs (the success
            predicate at each sampled frame: many more labels than episodes).
        replay_bundle: also train on this world model's replays of the training episodes (each
            episode's recorded actions from its first frame, as ``wmgym judge calibrate``
            replays them), labelled with the recorded episode's per-frame success: the probe
            then learns to judge generated frames (blurred, drifting) by what truly happened.
            Held-out episodes are replayed too and scored as ``val_replay``.
        replay_episodes: replay only the first N training episodes (0: all of them).
        replay_batch: episodes per batched world-model call.
        replay_inputs: ``frames`` (the replays' frames, decoded and encoded again, as the probe
            reads them by default) or ``latents`` (the world model's own latents of its
            replays, as the probe reads them with ``inputs="latents"``; nothing is decoded).
            The probe records it, and by default judges the way it was trained.
        replay_wm: how the world model samples the replays (:class:`wm_env.options.
            WorldModelOptions`; its device is the runtime's): ``--replay-wm.num-steps 1
            --replay-wm.dtype bf16`` for a probe of leaderboards run that way.
        run_dir: checkpoints, latent cache, replay cache, loss log (default
            ``runs/<out name>/probe``).
    """

    bundle: Path = Path("models/default")
    out: Path = Path("models/probe")
    data: DataConfig = field(default_factory=DataConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    prefix_fraction: float = 0.5
    instruction_dropout: float = 0.1
    frame_loss_weight: float = 0.5
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=1000,
            batch_size=64,
            lr=3e-4,
            weight_decay=0.05,
            warmup_steps=100,
            min_lr_ratio=0.05,
            ema_decay=0.99,
            checkpoint_every=500,
            log_every=50,
        )
    )
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    replay_bundle: Path | None = None
    replay_episodes: int = 0
    replay_batch: int = 16
    replay_inputs: str = "frames"
    replay_wm: WorldModelOptions = field(default_factory=WorldModelOptions)
    run_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.replay_inputs not in INPUTS:
            from wm_env.errors import lookup

            lookup("replay inputs", self.replay_inputs, dict.fromkeys(INPUTS))
        if self.replay_episodes < 0 or self.replay_batch < 1:
            raise ValueError(
                f"need replay_episodes >= 0 and replay_batch >= 1; got {self.replay_episodes}, {self.replay_batch}"
            )
        if self.frame_loss_weight < 0:
            raise ValueError(f"frame_loss_weight must be >= 0; got {self.frame_loss_weight}")
        for name in ("prefix_fraction", "instruction_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)}")

    def resolved_run_dir(self) -> Path:
        return self.run_dir or Path("runs") / self.out.name / "probe"


@dataclass
class LabelledEpisodes:
    """Cached latents of whole episodes with their labels.

    Attributes:
        latents: float32 ``(N, L, D)`` normalised, episodes back to back.
        starts, lengths: int64 ``(E,)`` where each episode's frames lie in ``latents``.
        flags: bool ``(N,)`` success predicate per frame.
        instructions: int64 ``(E, 4)`` instruction slot ids of each episode.
    """

    latents: torch.Tensor
    starts: np.ndarray
    lengths: np.ndarray
    flags: np.ndarray
    instructions: np.ndarray

    @property
    def success(self) -> np.ndarray:
        """bool ``(E,)``: each episode's label (the predicate at its last frame)."""
        return self.flags[self.starts + self.lengths - 1]

    def extended(self, other: LabelledEpisodes) -> LabelledEpisodes:
        """These episodes followed by ``other``'s (latents on this one's device)."""
        return LabelledEpisodes(
            torch.cat([self.latents, other.latents.to(self.latents.device)]),
            np.concatenate([self.starts, other.starts + len(self.latents)]),
            np.concatenate([self.lengths, other.lengths]),
            np.concatenate([self.flags, other.flags]),
            np.concatenate([self.instructions, other.instructions]),
        )


def episode_labels(dataset, episode_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """bool ``(N,)`` per-frame success of the episodes, back to back.

    Datasets without per-frame flags use the episode's ``success`` on its last frame only (and
    False before it): prefixes of such episodes are then labelled as failures.
    """
    flags = []
    for ep, length in zip(episode_ids.tolist(), lengths.tolist(), strict=True):
        per_frame = dataset.success_per_step(ep)
        if per_frame is None:
            label = dataset.success(ep)
            if label is None:
                raise ValueError(
                    f"{dataset.root}: episode {ep} has no success label; the probe needs labelled episodes"
                )
            per_frame = np.zeros(length, bool)
            per_frame[-1] = label
        flags.append(np.asarray(per_frame, bool))
    return np.concatenate(flags)


def replay_arrays(
    config: ProbeStageConfig,
    arrays: dict[str, np.ndarray],
    flags: np.ndarray,
    path: Path,
    limit: int = 0,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """World-model replays of ``arrays``' episodes (the first ``limit``; 0: all), cached at ``path``.

    Args:
        arrays: ``LeRobotDataset.load_arrays`` output of recorded episodes.
        flags: bool ``(N,)`` their per-frame success, back to back.
    Returns:
        ``load_arrays``-like ``frames``/``starts``/``lengths``/``episode_ids`` of the replays
        (``latents`` ``(N, L, D)`` in the encoder's units instead of ``frames`` when
        ``config.replay_inputs`` is ``latents``), and their per-frame flags: replay frame ``t``
        stands for recorded frame ``t``.
    """
    from judges.calibrate import cached_replays

    count = len(arrays["episode_ids"]) if not limit else min(limit, len(arrays["episode_ids"]))
    starts, lengths = arrays["starts"][:count], arrays["lengths"][:count]
    actions = [
        arrays["actions"][s : s + n][arrays["action_valid"][s : s + n]][:, :7]
        for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)
    ]
    replays = cached_replays(
        path,
        config.replay_bundle,
        config.data.dataset,
        arrays["episode_ids"][:count].tolist(),
        arrays["frames"][starts],
        actions,
        seed=config.runtime.seed,
        wm=dataclasses.replace(config.replay_wm, device=config.runtime.device),
        batch=config.replay_batch,
        progress=progress,
        latents=config.replay_inputs == "latents",
        states=None if arrays.get("states") is None else arrays["states"][starts],
    )
    if (
        config.replay_inputs == "frames"
        and replays
        and replays[0].shape[1:] != arrays["frames"].shape[1:]
    ):
        raise ValueError(
            f"{config.replay_bundle} generates {replays[0].shape[1:]} frames but the dataset has "
            f"{arrays['frames'].shape[1:]}: replay with a world model of the probe's resolution"
        )
    replay_lengths = np.array([len(r) for r in replays], dtype=np.int64)  # (E,)
    if (replay_lengths > lengths).any():
        raise ValueError(
            "a replay is longer than its recorded episode (invalid actions mid-episode?)"
        )
    replay_flags = np.concatenate(
        [flags[s : s + n] for s, n in zip(starts.tolist(), replay_lengths.tolist(), strict=True)]
    )
    return {
        config.replay_inputs: np.concatenate(replays),
        "starts": np.cumsum(replay_lengths) - replay_lengths,
        "lengths": replay_lengths,
        "episode_ids": arrays["episode_ids"][:count],
    }, replay_flags


def sample_frames(
    rng: np.random.Generator, ends: np.ndarray, count: int, jitter: bool = True
) -> np.ndarray:
    """int64 ``(B, count)`` frame offsets spread over ``0..ends[b] - 1`` (first and last kept).

    With ``jitter`` the inner frames move by up to half a spacing either way (a training
    augmentation); without it this is :func:`judges.probe.uniform_frame_indices` per row.
    """
    ends = np.asarray(ends, dtype=np.int64)  # (B,)
    grid = np.linspace(0.0, 1.0, count)[None] * (ends[:, None] - 1)  # (B, count)
    if jitter and count > 2:
        spacing = (ends[:, None] - 1) / (count - 1)
        noise = rng.uniform(-0.5, 0.5, grid.shape) * spacing
        noise[:, [0, -1]] = 0.0
        grid = grid + noise
    return np.sort(np.clip(np.round(grid), 0, ends[:, None] - 1).astype(np.int64), axis=1)


def evaluate_probe(probe: SuccessProbe, episodes: LabelledEpisodes) -> dict[str, float]:
    """Accuracy, TPR, FPR of whole-episode verdicts (uniform frames, p >= 0.5)."""
    count = probe.config.num_frames
    rows = np.stack(
        [
            s + uniform_frame_indices(n, count)
            for s, n in zip(episodes.starts, episodes.lengths, strict=True)
        ]
    )  # (E, F)
    probe.eval()
    with torch.no_grad():
        p = torch.sigmoid(
            probe(episodes.latents[torch.as_tensor(rows)], torch.as_tensor(episodes.instructions))
        ).numpy()
    from judges.calibrate import binary_metrics

    return binary_metrics(p >= 0.5, episodes.success)


def run_probe_stage(config: ProbeStageConfig, progress: bool = True) -> Path:
    """Train the probe; write it to ``config.out``; return that directory."""
    device = torch.device(config.runtime.device)
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    bundle_config = read_config(config.bundle)
    if "encoder" not in bundle_config:
        raise ValueError(f"{config.bundle} has no encoder: run `wmgym train encoder` first")
    encoder = build_encoder_from_config(bundle_config, config.bundle, device)
    adapter = build_adapter_from_config(bundle_config, config.bundle, device)
    dataset, train, val = load_split(config.data, progress)
    weights = latent_space_hashes(bundle_config)
    run_dir = config.resolved_run_dir()
    space = f"{bundle_config['encoder']}|{bundle_config.get('adapter')}|{weights}"

    def labelled(arrays, flags=None) -> tuple[torch.Tensor, LabelledEpisodes]:
        if "latents" in arrays:  # a world model's own latents of its replays: nothing to encode
            raw = torch.from_numpy(arrays["latents"]).float()  # (N, L, D)
        else:
            raw = cached_episode_latents(
                run_dir / "latents.safetensors",
                space,
                arrays,
                lambda frames: encode_frames(encoder, adapter, frames, progress=progress),
            )
        ids = [
            instruction_ids(dataset.instruction(int(e)), config.probe.instruction)
            for e in arrays["episode_ids"]
        ]
        return raw, LabelledEpisodes(
            raw,
            arrays["starts"],
            arrays["lengths"],
            episode_labels(dataset, arrays["episode_ids"], arrays["lengths"])
            if flags is None
            else flags,
            np.stack(ids).astype(np.int64),
        )

    def replayed(arrays, recorded: LabelledEpisodes, split: str, limit: int = 0):
        replays, flags = replay_arrays(
            config, arrays, recorded.flags, run_dir / f"replays_{split}.npz", limit, progress
        )
        raw_replays, episodes = labelled(replays, flags)
        episodes.latents = (raw_replays - mean) / std
        return episodes

    raw, episodes = labelled(train)
    mean = raw.mean(dim=(0, 1))
    std = raw.std(dim=(0, 1)).clamp_min(1e-4)
    episodes.latents = ((raw - mean) / std).to(device)  # (N, L, D)
    held_out = held_out_replays = None
    if val is not None:
        raw_val, held_out = labelled(val)
        held_out.latents = (raw_val - mean) / std
    replay_provenance = {}
    if config.replay_bundle is not None:
        replays = replayed(train, episodes, "train", config.replay_episodes)
        replay_provenance = {
            "replays": {
                "bundle": str(config.replay_bundle),
                "bundle_sha256": bundle_sha256(config.replay_bundle),
                "episodes": len(replays.lengths),
                "inputs": config.replay_inputs,
                "num_steps": config.replay_wm.num_steps,
                "dtype": config.replay_wm.dtype,
            }
        }
        episodes = episodes.extended(replays)
        if val is not None:
            held_out_replays = replayed(val, held_out, "val")
    tokens, channels = raw.shape[1:]
    grid = tuple(bundle_config["encoder"]["grid"])
    if grid[0] * grid[1] != tokens:
        raise ValueError(f"{config.bundle}: encoder grid {grid} but {tokens} latent tokens")
    torch.manual_seed(config.runtime.seed)
    model = SuccessProbe(config.probe, grid, channels)
    count, batch = config.probe.num_frames, config.optim.batch_size

    def loss_fn(probe, step: int):
        rng = batch_rng(config.runtime, step)
        ids = rng.integers(0, len(episodes.lengths), batch)  # (B,)
        full = episodes.lengths[ids]
        cut = rng.random(batch) < config.prefix_fraction
        ends = np.where(cut, rng.integers(1, full + 1), full)  # (B,) frames kept
        rows = episodes.starts[ids, None] + sample_frames(rng, ends, count)  # (B, F)
        labels = episodes.flags[episodes.starts[ids] + ends - 1]  # (B,)
        hidden = rng.random(batch) < config.instruction_dropout
        instructions = np.where(hidden[:, None], 0, episodes.instructions[ids])  # (B, 4)
        logits, frame_logits = probe(
            episodes.latents[torch.as_tensor(rows, device=device)],
            torch.as_tensor(instructions, device=device),
            per_frame=True,
        )  # (B,), (B, F)
        target = torch.as_tensor(labels, dtype=torch.float32, device=device)
        episode_loss = F.binary_cross_entropy_with_logits(logits, target)
        frame_target = torch.as_tensor(episodes.flags[rows], dtype=torch.float32, device=device)
        frame_loss = F.binary_cross_entropy_with_logits(frame_logits, frame_target)
        loss = episode_loss + config.frame_loss_weight * frame_loss
        accuracy = float(((logits > 0) == (target > 0.5)).float().mean())
        return loss, {
            "episode_loss": episode_loss.item(),
            "frame_loss": frame_loss.item(),
            "accuracy": accuracy,
        }

    trainer = Trainer(
        model, loss_fn, run_dir, config.optim, config.runtime, run_config=config_dict(config)
    )
    pin_run_inputs(
        trainer, {**replay_provenance, "encoder": weights} if replay_provenance else weights
    )
    trained = trainer.fit(progress).cpu()
    episodes.latents = episodes.latents.cpu()
    metrics = {"train": evaluate_probe(trained, episodes)}
    if held_out is not None:
        metrics["val"] = evaluate_probe(trained, held_out)
    if held_out_replays is not None:
        metrics["val_replay"] = evaluate_probe(trained, held_out_replays)
    section = probe_section(
        trained,
        mean,
        std,
        encoder_bundle=os.path.relpath(config.bundle.resolve(), config.out.resolve()),
        encoder_sha256=weights,
        dataset=dataset_fingerprint(dataset),
        split={"val_fraction": config.data.val_fraction, "split_seed": config.data.split_seed},
        steps=trainer.state.step,
        train_seconds=round(trainer.state.seconds, 1),
        metrics=metrics,
        **replay_provenance,
    )
    write_component(config.out, PROBE_SECTION, section, trained.state_dict())
    return config.out
