"""Which episodes of a LeRobot v3 dataset are for training and which are held out, and loading
them as arrays. Every stage, judge calibration and evaluation splits the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported lazily: training from packed latents needs no pandas/pyarrow
    from wm_env.dataset.lerobot import LeRobotDataset


def split_episodes(
    num_episodes: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random split of episode ids ``0..num_episodes-1`` into (train, val).

    ``round(num_episodes * val_fraction)`` episodes (at least one when ``val_fraction > 0``, and
    never all) go to validation. Both arrays are sorted int64.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    n_val = int(round(num_episodes * val_fraction))
    if val_fraction > 0:
        if num_episodes < 2:
            raise ValueError(f"need at least 2 episodes to hold some out; got {num_episodes}")
        n_val = min(max(n_val, 1), num_episodes - 1)
    order = np.random.default_rng(seed).permutation(num_episodes)
    return np.sort(order[n_val:]).astype(np.int64), np.sort(order[:n_val]).astype(np.int64)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to train on.

    Attributes:
        dataset: a LeRobot v3 dataset directory (``wmgym data collect`` or a user's).
        camera: camera to use (``image`` is the main one).
        val_fraction: share of episodes held out for validation.
        split_seed: seed of the episode split (the same split in every stage).
    """

    dataset: Path = Path("data/sim64")
    camera: str = "image"
    val_fraction: float = 0.1
    split_seed: int = 0


def load_split(
    config: DataConfig, progress: bool = True
) -> tuple[LeRobotDataset, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(dataset, train arrays, validation arrays) as ``LeRobotDataset.load_arrays`` returns them."""
    from wm_env.dataset.lerobot import LeRobotDataset

    dataset = LeRobotDataset(config.dataset)
    train_ids, val_ids = split_episodes(
        dataset.num_episodes, config.val_fraction, config.split_seed
    )
    ids = dataset.episode_ids
    train = dataset.load_arrays(config.camera, ids[train_ids], progress=progress)
    val = (
        dataset.load_arrays(config.camera, ids[val_ids], progress=progress)
        if len(val_ids)
        else None
    )
    return dataset, train, val


def dataset_fingerprint(dataset: LeRobotDataset) -> dict:
    """What identifies a dataset's content for caches and provenance."""
    return {
        "root": str(dataset.root.resolve()),
        "episodes": int(dataset.num_episodes),
        "frames": int(dataset.num_frames),
        "fps": float(dataset.fps),
    }
