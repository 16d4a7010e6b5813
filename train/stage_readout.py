"""``wmgym train readout``: the state read-out (judges/state_readout.py) on true sim frames.

The targets come from replaying each episode in the sim (:mod:`wm_env.sim.replay`): the
end-effector, the gripper opening and every task object's position at every frame. Only true
frames are seen: the read-out measures world models, so it must not learn their artefacts.
The held-out episodes of the split give the read-out's own error on true frames (its floor),
stored with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from judges.state_readout import (
    OBJECT_CLASSES,
    ReadoutConfig,
    StateReadout,
    encode_targets,
    episode_classes,
    readout_loss,
    save_readout,
)
from train.loop import OptimConfig, RuntimeConfig, Trainer, batch_rng, config_dict
from wm_env.dataset.lerobot import LeRobotDataset
from wm_env.dataset.split import DataConfig, dataset_fingerprint, split_episodes
from wm_env.sim.replay import EpisodeStates, dataset_states


@dataclass(frozen=True)
class ReadoutStageConfig:
    """Train a state read-out on the true frames of a sim dataset.

    Attributes:
        out: the read-out directory to write (``config.json`` + ``readout.safetensors``).
        readout: the network's size.
        max_episodes: use at most this many episodes of the dataset (0: all).
        replay_workers: processes replaying episodes for their states (cached in the dataset).
        run_dir: checkpoints and loss log (default ``runs/<out>/readout``).
    """

    out: Path = Path("models/state_readout")
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset=Path("data/sim64_readout")))
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    max_episodes: int = 0
    replay_workers: int = 2
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=4000, batch_size=64, lr=1e-3, warmup_steps=100, min_lr_ratio=0.05, ema_decay=0.999
        )
    )
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    run_dir: Path | None = None

    def resolved_run_dir(self) -> Path:
        return self.run_dir or Path("runs") / self.out.name / "readout"


def state_targets(states: EpisodeStates) -> np.ndarray:
    """float32 ``(T, 4 + 4 K)`` network targets of one episode's frames."""
    steps = len(states.eef)
    present = np.zeros((steps, len(OBJECT_CLASSES)), bool)
    objects = np.zeros((steps, len(OBJECT_CLASSES), 3))
    for name, cls in episode_classes(states.episode_spec).items():
        k = OBJECT_CLASSES.index(cls)
        present[:, k] = True
        objects[:, k] = states.objects[name]
    return encode_targets(states.eef, states.gripper, present, objects)


def load_frames_and_targets(
    dataset: LeRobotDataset, episodes, camera: str, workers: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames ``(N, H, W, 3)`` and float32 targets ``(N, 4 + 4 K)`` of ``episodes``."""
    states = dataset_states(dataset, episodes, workers=workers, progress=progress)
    frames = [dataset.frames(int(e), camera) for e in episodes]
    targets = [state_targets(states[int(e)]) for e in episodes]
    return np.concatenate(frames), np.concatenate(targets)


@torch.no_grad()
def readout_errors(model: StateReadout, frames: np.ndarray, targets: np.ndarray) -> dict:
    """Mean errors of ``model`` on frames with known targets: eef and object positions (cm),
    gripper (cm), and presence accuracy."""
    from judges.state_readout import decode_outputs

    read = model.read(frames)
    true = decode_outputs(torch.from_numpy(targets))
    present = true.present > 0.5
    object_error = np.linalg.norm(read.objects - true.objects, axis=-1)[present]
    return {
        "frames": len(frames),
        "eef_cm": float(100 * np.linalg.norm(read.eef - true.eef, axis=-1).mean()),
        "gripper_cm": float(100 * np.abs(read.gripper - true.gripper).mean()),
        "object_cm": float(100 * object_error.mean()),
        "object_cm_p95": float(100 * np.percentile(object_error, 95)),
        "presence_accuracy": float(((read.present > 0.5) == present).mean()),
    }


def run_readout_stage(config: ReadoutStageConfig, progress: bool = True) -> Path:
    """Train the read-out; write it to ``config.out`` with its held-out errors."""
    dataset = LeRobotDataset(config.data.dataset)
    ids = dataset.episode_ids
    if config.max_episodes:
        ids = ids[: config.max_episodes]
    train_ids, val_ids = split_episodes(len(ids), config.data.val_fraction, config.data.split_seed)
    load = lambda idx: load_frames_and_targets(  # noqa: E731
        dataset, ids[idx], config.data.camera, config.replay_workers, progress
    )
    frames, targets = load(train_ids)
    val_frames, val_targets = load(val_ids) if len(val_ids) else (None, None)
    device = torch.device(config.runtime.device)
    model = StateReadout(config.readout)
    targets_t = torch.from_numpy(targets).to(device)

    def loss_fn(net, step: int):
        rng = batch_rng(config.runtime, step)
        idx = rng.integers(0, len(frames), config.optim.batch_size)
        batch = torch.from_numpy(frames[idx]).to(device)
        gain = torch.from_numpy(rng.uniform(0.9, 1.1, (len(idx), 1, 1, 1))).float().to(device)
        images = (batch.float() / 255 * gain).clamp(0, 1)  # mild lighting jitter
        return readout_loss(net(images), targets_t[torch.as_tensor(idx, device=device)])

    trainer = Trainer(
        model,
        loss_fn,
        config.resolved_run_dir(),
        config.optim,
        config.runtime,
        run_config=config_dict(config),
    )
    trained = trainer.fit(progress).eval()
    extra = {
        "dataset": dataset_fingerprint(dataset),
        "train_episodes": len(train_ids),
        "steps": trainer.state.step,
        "train_seconds": round(trainer.state.seconds, 1),
    }
    if val_frames is not None:
        extra["held_out"] = {
            "episodes": len(val_ids),
            **readout_errors(trained, val_frames, val_targets),
        }
    save_readout(trained.cpu(), config.out, extra)
    return config.out
