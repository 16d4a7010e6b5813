"""The report next to a leaderboard: markdown, a static HTML page, a bar plot and GIF grids.

``write_report(out_dir, main, long, rows, provenance)`` writes ``report.md``, ``report.html``,
``success.png`` (success with Wilson intervals per policy and condition) and ``grid_<task>.gif``
(sampled episodes, one row per policy, clean next to perturbed, the verdict marked on the last
frame with a check or a cross).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.leaderboard import CLEAN

MAIN_COLUMNS = ["rank", "policy", "episodes", "success", "success_lo", "success_hi",
                "perturbed_success", "drop", "drop_lo", "drop_hi", "errors"]  # fmt: skip
GIF_SCALE = 2  # 64 px frames are tiny on screen


def bar_plot(long: pd.DataFrame, path: Path) -> Path:
    """Grouped bars of pooled success (task 'all') per policy and condition, Wilson whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = long[long["task"] == "all"]
    policies = list(dict.fromkeys(pooled["policy"]))
    conditions = list(dict.fromkeys(pooled["condition"]))
    width = 0.8 / max(len(conditions), 1)
    figure, axis = plt.subplots(figsize=(max(4.0, 1.3 * len(policies) + 1.5), 3.2))
    for j, condition in enumerate(conditions):
        part = pooled[pooled["condition"] == condition].set_index("policy").reindex(policies)
        x = np.arange(len(policies)) + (j - (len(conditions) - 1) / 2) * width
        success = part["success"].to_numpy(dtype=float)
        errors = np.vstack(
            [
                success - part["success_lo"].to_numpy(float),
                part["success_hi"].to_numpy(float) - success,
            ]
        )
        axis.bar(x, success, width, yerr=np.nan_to_num(errors), capsize=3, label=condition)
    axis.set_xticks(np.arange(len(policies)), policies, rotation=20, ha="right")
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("success (Wilson 95%)")
    axis.legend(fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def gif_grids(out_dir: Path, rows: Sequence[dict[str, Any]], fps: float = 5.0) -> list[Path]:
    """One GIF per task: a row per policy, a column per condition, sampled episode 0."""
    from benchmarks.runner import episode_file
    from benchmarks.suite import EpisodeKey
    from wm_env.viz import caption, grid, save_gif, upscale

    frame = pd.DataFrame(list(rows))
    written = []
    for task, part in frame[frame["index"] == 0].groupby("task", sort=False):
        policies = list(dict.fromkeys(part["policy"]))
        conditions = list(dict.fromkeys(part["condition"]))
        videos = []
        for policy in policies:
            for condition in conditions:
                match = part[(part["policy"] == policy) & (part["condition"] == condition)]
                video = None
                if not match.empty:
                    row = match.iloc[0]
                    key = EpisodeKey(policy, task, condition, int(row["seed"]), 0)
                    path = episode_file(out_dir, key)
                    if path.exists():
                        with np.load(path) as data:
                            video = data["frames"] if "frames" in data else None
                if video is None:
                    continue
                success = None if pd.isna(row["success"]) else bool(row["success"])
                videos.append(
                    caption(upscale(video, GIF_SCALE), f"{policy} | {condition}", success)
                )
        if videos:
            written.append(
                save_gif(out_dir / f"grid_{task}.gif", grid(videos, len(conditions)), fps)
            )
    return written


def _markdown_table(table: pd.DataFrame) -> str:
    columns = list(table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        cells = [f"{v:.2f}" if isinstance(v, float) and not pd.isna(v) else ("" if pd.isna(v) else str(v))
                 for v in row]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    main: pd.DataFrame,
    long: pd.DataFrame,
    rows: Sequence[dict[str, Any]],
    provenance: dict[str, Any],
) -> Path:
    """Write report.md / report.html with the table, the bar plot and the GIF grids."""
    out_dir = Path(out_dir)
    plot = bar_plot(long, out_dir / "success.png")
    gifs = gif_grids(out_dir, rows)
    table = main[[c for c in MAIN_COLUMNS if c in main.columns]]
    pooled = long[long["task"] == "all"][
        ["policy", "condition", "episodes", "success", "success_lo", "success_hi", "drop"]
    ]
    facts = ", ".join(f"{k}: `{v}`" for k, v in provenance.items() if v != "")
    lines = [
        f"# Leaderboard: {provenance.get('suite', '')}",
        "",
        f"World: **{provenance.get('world', '')}**. Success is judged by `{provenance.get('judge', '')}`; "
        f"intervals are Wilson 95% (success) and paired bootstrap 95% (drop = {CLEAN} minus perturbed).",
        "",
        _markdown_table(table),
        "",
        "## Per condition",
        "",
        _markdown_table(pooled),
        "",
        f"![success per policy and condition]({plot.name})",
        "",
        *[f"![{gif.stem}]({gif.name})" for gif in gifs],
        "",
        "Per task: `leaderboard_long.csv`. Every episode: `episodes.jsonl`.",
        "",
        f"Provenance: {facts}",
    ]
    markdown = out_dir / "report.md"
    markdown.write_text("\n".join(lines) + "\n")
    page = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Leaderboard {html.escape(str(provenance.get('suite', '')))}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head><body>",
        f"<h1>Leaderboard: {html.escape(str(provenance.get('suite', '')))}</h1>",
        table.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep=""),
        "<h2>Per condition</h2>",
        pooled.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep=""),
        f"<p><img src='{plot.name}'></p>",
        *[f"<p><img src='{gif.name}'></p>" for gif in gifs],
        f"<p><small>{html.escape(facts)}</small></p></body></html>",
    ]
    (out_dir / "report.html").write_text("\n".join(page))
    return markdown
