"""Loading a LeRobot v3 dataset for training: episodes split into train / validation arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from train.clips import split_episodes

if TYPE_CHECKING:  # imported lazily: training from packed latents needs no pandas/pyarrow
    from wm_env.dataset.lerobot import LeRobotDataset


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
