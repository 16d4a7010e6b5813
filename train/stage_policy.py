"""``wmgym train policy``: behaviour cloning of the small VLA on a LeRobot dataset's demonstrations.

The chosen episodes (by default the successful ones) are decoded once and their frames cached in
the run directory; every step gathers a batch of (frame, instruction, gripper command, step,
next ``chunk`` actions) with vectorised indexing, shifts the frames by a few random pixels
(augmentation) and minimises the cross-entropy over the 256 action bins. Steps past an episode's
end are masked out. The run is resumable (``train.loop.Trainer``); ``snapshot_steps`` also
exports the policy at earlier steps of the same run (the training-budget checkpoints).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from policies.action_bins import ActionBins
from policies.small_vla import SmallVLA, SmallVLAConfig, SmallVLAPolicy, Vocabulary
from train.loop import OptimConfig, RuntimeConfig, Trainer, batch_rng, config_dict
from train.stage_dynamics import cached_latents
from wm_env.dataset.lerobot import LeRobotDataset
from wm_env.dataset.split import dataset_fingerprint
from wm_env.sim.tasks import get_family


@dataclass(frozen=True)
class PolicyDataConfig:
    """Which demonstrations to clone.

    Attributes:
        dataset: one or more LeRobot v3 dataset directories (``wmgym data collect``).
        camera: camera to use (``image`` is the main one).
        families: task families to keep (empty: all); needs per-episode ``family`` metadata.
        success_only: keep only episodes labelled successful.
        min_quality: keep only episodes whose expert quality level is at least this (0: all).
    """

    dataset: tuple[Path, ...] = (Path("data/sim64"),)
    camera: str = "image"
    families: tuple[str, ...] = ()
    success_only: bool = True
    min_quality: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.dataset, str | Path):  # one directory given as such
            object.__setattr__(self, "dataset", (Path(self.dataset),))
        if not self.dataset:
            raise ValueError("data.dataset needs at least one dataset directory")
        for name in self.families:
            get_family(name)  # unknown names raise with a suggestion
        if not 0.0 <= self.min_quality <= 1.0:
            raise ValueError(f"min_quality must be in [0, 1]; got {self.min_quality}")


@dataclass(frozen=True)
class PolicyStageConfig:
    """Train the small VLA (``policies.small_vla``) by behaviour cloning.

    Attributes:
        out: checkpoint directory of the trained policy (``config.json`` + ``model.safetensors``).
        model: network sizes, inputs, action chunk.
        shift: random image shift in pixels (augmentation; 0 disables).
        label_sigma: Gaussian label smoothing over neighbouring bins (in bins; 0 = one-hot, as
            OpenVLA). With few demonstrations one-hot targets do not generalise: a bin next
            to the demonstrated one is as wrong as the far end of the range.
        snapshot_steps: also export the policy after these many steps of the same run.
        snapshot_out: where snapshots go; ``{out}`` and ``{step}`` are filled in.
        run_dir: checkpoints, frame cache, loss log (default ``runs/policies/<out name>``).
    """

    out: Path = Path("models/policies/small-vla")
    data: PolicyDataConfig = field(default_factory=PolicyDataConfig)
    model: SmallVLAConfig = field(default_factory=SmallVLAConfig)
    shift: int = 4
    label_sigma: float = 8.0
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=6000,
            batch_size=32,
            lr=1e-3,
            warmup_steps=200,
            min_lr_ratio=0.1,
            weight_decay=1e-4,
            ema_decay=0.999,
            checkpoint_every=500,
            log_every=50,
        )
    )
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    snapshot_steps: tuple[int, ...] = ()
    snapshot_out: str = "{out}-step{step}"
    run_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.shift < 0 or self.label_sigma < 0:
            raise ValueError(
                f"shift and label_sigma must be >= 0; got {self.shift}, {self.label_sigma}"
            )
        bad = [s for s in self.snapshot_steps if not 0 < s < self.optim.steps]
        if bad:
            raise ValueError(
                f"snapshot_steps must lie in (0, optim.steps={self.optim.steps}); got {bad}"
            )
        if self.snapshot_steps and "{step}" not in self.snapshot_out:
            raise ValueError(f"snapshot_out needs a '{{step}}' field; got {self.snapshot_out!r}")

    def resolved_run_dir(self) -> Path:
        return self.run_dir or Path("runs") / "policies" / self.out.name

    def snapshot_dir(self, step: int) -> Path:
        return Path(self.snapshot_out.format(out=self.out, step=step))


# ---------------------------------------------------------------------- data


def select_episodes(dataset: LeRobotDataset, config: PolicyDataConfig) -> np.ndarray:
    """int64 ``(E,)`` ids of ``dataset``'s episodes to clone (possibly none)."""
    kept = []
    for ep in dataset.episode_ids.tolist():
        meta = dataset.episode_meta(ep)
        success = dataset.success(ep)
        missing = [
            label
            for label, needed, present in (
                ("success", config.success_only, success is not None),
                ("quality_level", config.min_quality > 0, "quality_level" in meta),
                ("family", bool(config.families), "family" in meta),
            )
            if needed and not present
        ]
        if missing:
            raise ValueError(
                f"{dataset.root}: episode {ep} has no {missing[0]!r} label to select on; "
                "use --data.no-success-only, --data.min-quality 0 or no --data.families"
            )
        if config.success_only and not success:
            continue
        if config.min_quality > 0 and meta["quality_level"] < config.min_quality:
            continue
        if config.families and meta["family"] not in config.families:
            continue
        kept.append(ep)
    return np.asarray(kept, dtype=np.int64)


@dataclass
class Demonstrations:
    """Chosen episodes laid out back to back (N frames, E episodes)."""

    frames: torch.Tensor  # uint8 (N, S, S, 3)
    actions: torch.Tensor  # float32 (N, 7); rows with valid False hold the null action
    valid: torch.Tensor  # bool (N,): the row's action is real
    frame_index: torch.Tensor  # int64 (N,) step within the episode
    episode: torch.Tensor  # int64 (N,) position of the row's episode in 0..E-1
    episode_end: torch.Tensor  # int64 (N,) first row after the row's episode
    instructions: list[str]  # (E,)
    episode_ids: np.ndarray  # int64 (E,) ids in their datasets
    sources: list[str]  # (E,) the dataset each episode comes from

    @property
    def samples(self) -> torch.Tensor:
        """int64 rows that start a training sample (a real action)."""
        return torch.nonzero(self.valid).squeeze(1)


def _resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.shape[1:3] == (size, size):
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _load_one(
    root: Path, config: PolicyDataConfig, image_size: int, cache_dir: Path | None, progress: bool
) -> dict | None:
    """One dataset's chosen episodes (None if none qualifies); frames decoded once, cached."""
    if not root.is_dir():
        raise ValueError(
            f"dataset {root} does not exist; record one with "
            f"`wmgym data collect --family all --episodes 400 --out {root}`"
        )
    dataset = LeRobotDataset(root)
    dataset.camera_key(config.camera)  # unknown cameras raise with a suggestion
    ids = select_episodes(dataset, config)
    if len(ids) == 0:
        return None

    def decode() -> torch.Tensor:
        arrays = dataset.load_arrays(config.camera, ids, progress=progress)
        return torch.from_numpy(_resize_frames(arrays["frames"], image_size))

    if cache_dir is None:
        frames = decode()
    else:
        fingerprint = dataset_fingerprint(dataset)
        name = hashlib.sha256(fingerprint["root"].encode()).hexdigest()[:12]
        digest = hashlib.sha256(ids.tobytes()).hexdigest()[:16]
        key = f"{fingerprint}|{config.camera}|{image_size}|{digest}"
        frames = cached_latents(cache_dir / f"frames-{name}.safetensors", key, decode)
    actions = np.concatenate([dataset.actions(int(e)) for e in ids])  # (n, D)
    if actions.shape[1] != 7:
        raise ValueError(f"{root}: actions have {actions.shape[1]} dims; the VLA needs 7")
    return {
        "frames": frames,
        "actions": actions,
        "valid": np.concatenate([dataset.action_valid(int(e)) for e in ids]),
        "lengths": np.array([dataset.length(int(e)) for e in ids], dtype=np.int64),
        "instructions": [dataset.instruction(int(e)) for e in ids],
        "ids": ids,
    }


def load_demonstrations(
    config: PolicyDataConfig, image_size: int, cache_dir: Path | None, progress: bool = True
) -> Demonstrations:
    """Select, load and (once) decode the demonstrations of every dataset of ``config``.

    Raises:
        ValueError: a dataset that does not exist, or no qualifying episode in any of them.
    """
    parts = [
        (root, part)
        for root in config.dataset
        if (part := _load_one(Path(root), config, image_size, cache_dir, progress)) is not None
    ]
    if not parts:
        raise ValueError(
            f"no episode of {[str(d) for d in config.dataset]} qualifies "
            f"(success_only={config.success_only}, min_quality={config.min_quality}, "
            f"families={list(config.families) or 'all'})"
        )
    lengths = np.concatenate([p["lengths"] for _, p in parts])  # (E,)
    starts = np.cumsum(lengths) - lengths
    episode = np.repeat(np.arange(len(lengths)), lengths)
    actions = np.concatenate([p["actions"] for _, p in parts])
    return Demonstrations(
        frames=torch.cat([p["frames"] for _, p in parts]),
        actions=torch.from_numpy(np.clip(actions, -1.0, 1.0)),
        valid=torch.from_numpy(np.concatenate([p["valid"] for _, p in parts])),
        frame_index=torch.from_numpy(np.arange(len(episode)) - np.repeat(starts, lengths)),
        episode=torch.from_numpy(episode),
        episode_end=torch.from_numpy(np.repeat(starts + lengths, lengths)),
        instructions=[text for _, p in parts for text in p["instructions"]],
        episode_ids=np.concatenate([p["ids"] for _, p in parts]),
        sources=[str(root) for root, p in parts for _ in p["ids"]],
    )


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``pad`` pixels (replicated borders): ``(B, C, H, W)`` -> same."""
    if pad == 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    offset = torch.randint(0, 2 * pad + 1, (2, b), generator=generator)  # (2, B)
    rows = (offset[0][:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
    cols = (offset[1][:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b)[:, None, None, None]
    channel = torch.arange(c)[None, :, None, None]
    return padded[batch, channel, rows.to(images.device), cols.to(images.device)]


def gather_batch(demos: Demonstrations, rows: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
    """Inputs and targets of the samples starting at ``rows`` (B,), vectorised.

    Returns ``frames`` uint8 (B, S, S, 3), ``episode`` (B,), ``gripper`` (B,) the previous
    action's gripper command (-1 at an episode's start), ``step`` (B,), ``first`` (B,) the row
    of the episode's first frame, ``targets`` (B, k, 7)
    and ``mask`` bool (B, k): the target row is a real action of the same episode.
    """
    future = rows[:, None] + torch.arange(chunk)  # (B, k)
    mask = future < demos.episode_end[rows][:, None]
    future = future.clamp(max=len(demos.valid) - 1)
    mask &= demos.valid[future]
    first = demos.frame_index[rows] == 0
    previous = demos.actions[(rows - 1).clamp(min=0), -1]
    return {
        "frames": demos.frames[rows],
        "episode": demos.episode[rows],
        "gripper": torch.where(first, torch.full_like(previous, -1.0), previous),
        "step": demos.frame_index[rows].float(),
        "first": rows - demos.frame_index[rows],
        "targets": demos.actions[future],
        "mask": mask,
    }


# ---------------------------------------------------------------------- training


def bin_loss(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, bins: ActionBins, sigma: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked cross-entropy of ``logits`` (B, k, 7, bins) against actions ``targets`` (B, k, 7)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -(bins.soft_targets(targets, sigma) * log_probs).sum(-1)  # (B, k, 7)
    weight = mask.to(nll.dtype)[..., None].expand_as(nll)
    loss = (nll * weight).sum() / weight.sum().clamp_min(1.0)
    with torch.no_grad():
        decoded = bins.decode(logits.argmax(-1))
        error = ((decoded - targets).abs() * weight).sum() / weight.sum().clamp_min(1.0)
    return loss, {"l1": float(error)}


def run_policy_stage(config: PolicyStageConfig, progress: bool = True) -> Path:
    """Train the small VLA; write the policy to ``config.out`` (and the snapshots)."""
    device = torch.device(config.runtime.device)
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    run_dir = config.resolved_run_dir()
    demos = load_demonstrations(config.data, config.model.image_size, run_dir, progress)
    vocab = Vocabulary.build(demos.instructions)
    tokens = vocab.encode(demos.instructions, config.model.max_words).to(device)  # (E, L)
    frames = demos.frames.to(device)
    samples = demos.samples
    bins = ActionBins(config.model.num_bins)
    torch.manual_seed(config.runtime.seed)  # initial weights
    model = SmallVLA(config.model, len(vocab))
    info = {
        "dataset": [str(d) for d in config.data.dataset],
        "episodes": int(len(demos.episode_ids)),
        "samples": int(len(samples)),
        "families": list(config.data.families) or "all",
        "success_only": config.data.success_only,
        "min_quality": config.data.min_quality,
    }
    trainer: Trainer | None = None

    def export(module: torch.nn.Module, path: Path, steps: int) -> None:
        copy = SmallVLA(config.model, len(vocab))
        copy.load_state_dict({k: v.detach().cpu() for k, v in module.state_dict().items()})
        seconds = round(trainer.state.seconds, 1) if trainer else 0.0
        SmallVLAPolicy(
            copy,
            vocab,
            name=path.name,
            device=config.runtime.device,
            info={**info, "steps": steps, "train_seconds": seconds},
        ).save_pretrained(path)

    def loss_fn(net, step: int):
        if step in config.snapshot_steps and trainer is not None:
            export(trainer.ema or trainer.model, config.snapshot_dir(step), step)
        rng = batch_rng(config.runtime, step)
        rows = samples[torch.from_numpy(rng.integers(0, len(samples), config.optim.batch_size))]
        batch = gather_batch(demos, rows, config.model.chunk)
        generator = torch.Generator().manual_seed(config.runtime.seed * 1_000_003 + step)
        pair = torch.cat([frames[rows.to(device)], frames[batch["first"].to(device)]], dim=-1)
        pair = pair.permute(0, 3, 1, 2).float() / 255.0  # (B, 6, S, S): now, first frame
        pair = random_shift(pair, config.shift, generator)  # the same shift for both
        logits = net(
            pair[:, :3],
            tokens[batch["episode"].to(device)],
            batch["gripper"].to(device),
            batch["step"].to(device),
            pair[:, 3:],
        )
        return bin_loss(
            logits, batch["targets"].to(device), batch["mask"].to(device), bins, config.label_sigma
        )

    trainer = Trainer(
        model, loss_fn, run_dir, config.optim, config.runtime, run_config=config_dict(config)
    )
    trained = trainer.fit(progress)
    export(trained, config.out, trainer.state.step)
    return config.out
