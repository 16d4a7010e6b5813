"""A human-readable summary of a LeRobot v3 dataset (``wmgym data info``)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from wm_env.dataset.lerobot import LeRobotDataset
from wm_env.errors import CorruptFileError


def episode_table(dataset: LeRobotDataset) -> pd.DataFrame:
    """One row per episode: index, length, instruction, success, family, quality level."""
    rows = []
    for ep in dataset.episode_ids:
        meta = dataset.episode_meta(int(ep))
        rows.append(
            {
                "episode": int(ep),
                "length": dataset.length(int(ep)),
                "instruction": dataset.instruction(int(ep)),
                "success": dataset.success(int(ep)),
                "family": meta.get("family"),
                "quality_level": meta.get("quality_level"),
            }
        )
    return pd.DataFrame(rows)


def summarize(root: str | os.PathLike) -> str:
    """Counts, cameras, fps, and success rates by family and expert quality."""
    dataset = LeRobotDataset(root)
    table = episode_table(dataset)
    lines = [
        f"{dataset.root}: {dataset.num_episodes} episodes, {dataset.num_frames} frames at {dataset.fps:g} fps",
        f"cameras: {', '.join(dataset.camera_keys)}; distinct instructions: {table['instruction'].nunique()}",
    ]
    if table["success"].notna().any():
        lines.append(f"success: {table['success'].mean():.3f}")
        by = [c for c in ("family", "quality_level") if table[c].notna().any()]
        if by:
            grouped = (
                table.groupby(by)["success"]
                .agg(["mean", "count"])
                .rename(columns={"mean": "success"})
            )
            lines.append(grouped.to_string())
    return "\n".join(lines)


def unreadable_episodes(
    dataset: LeRobotDataset, progress: bool = False
) -> list[tuple[int, str, str]]:
    """Decode every episode's data rows and every camera's frames; ``(episode, path, error)``
    for each that cannot be read whole (a truncated parquet or mp4, a missing file)."""
    from tqdm.auto import tqdm

    problems = []
    for ep in tqdm(dataset.episode_ids.tolist(), desc="checking episodes", disable=not progress):
        try:
            dataset.actions(int(ep))
        except Exception as error:  # noqa: BLE001 - every failure is reported
            problems.append((int(ep), _path_of(error, dataset._data_path(int(ep))), str(error)))
            continue
        for camera in dataset.camera_keys:
            path = dataset.video_path(int(ep), camera)
            try:
                frames = dataset.frames(int(ep), camera)
                if len(frames) != dataset.length(int(ep)):
                    raise ValueError(
                        f"{len(frames)} frames; the episode has {dataset.length(int(ep))}"
                    )
            except Exception as error:  # noqa: BLE001
                problems.append((int(ep), _path_of(error, path), str(error)))
    return problems


def _path_of(error: Exception, default: Path) -> str:
    return str(error.path) if isinstance(error, CorruptFileError) else str(default)


def check_report(root: str | os.PathLike, progress: bool = True) -> tuple[str, int]:
    """The text of ``wmgym data info --check`` and the number of unreadable episodes."""
    dataset = LeRobotDataset(root)
    problems = unreadable_episodes(dataset, progress)
    if not problems:
        return f"all {dataset.num_episodes} episodes decode in full", 0
    lines = [f"{len({p[0] for p in problems})} of {dataset.num_episodes} episodes cannot be read:"]
    lines += [f"  episode {ep}: {path}: {error}" for ep, path, error in problems]
    lines.append(
        "a dataset from `wmgym data collect`: rerun its command with --repair to record them again"
    )
    return "\n".join(lines), len({p[0] for p in problems})
