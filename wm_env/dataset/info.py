"""A human-readable summary of a LeRobot v3 dataset (``wmgym data info``)."""

from __future__ import annotations

import os

import pandas as pd

from wm_env.dataset.lerobot import LeRobotDataset


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
