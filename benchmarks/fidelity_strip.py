"""A PNG strip of a fidelity run's GIF grid at chosen steps, to look at without a GIF viewer.

    python -m benchmarks.fidelity_strip outputs/fidelity_anchor/fidelity_grid.gif \
        docs/fidelity_anchor/steps_1_10_20_40.png --steps 1 10 20 40 --episodes 2

Each panel is the grid's frame at that step (truth | world model, the read-out positions drawn,
one row per episode); the panels go left to right, the first ``--episodes`` rows of each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import numpy as np


def fidelity_strip(gif: Path, steps: list[int], episodes: int, rows_in_grid: int) -> np.ndarray:
    """``(H, W, 3)`` uint8: the grid's frames at ``steps`` (1-based), first ``episodes`` rows."""
    frames = iio.imread(gif)  # (T, rows * h, W, 3)
    if frames.ndim != 4:
        raise ValueError(f"{gif} is not an animated RGB GIF (shape {frames.shape})")
    too_late = [s for s in steps if not 1 <= s <= len(frames)]
    if too_late:
        raise ValueError(f"{gif} has {len(frames)} steps; cannot show steps {too_late}")
    row_height = frames.shape[1] // rows_in_grid
    height = row_height * min(episodes, rows_in_grid)
    return np.concatenate([frames[s - 1, :height, :, :3] for s in steps], axis=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gif", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 10, 20, 40])
    parser.add_argument("--episodes", type=int, default=2, help="rows of the grid shown")
    parser.add_argument("--rows", type=int, default=4, help="episode rows in the grid")
    args = parser.parse_args(argv)
    strip = fidelity_strip(args.gif, args.steps, args.episodes, args.rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.out, strip)
    print(f"wrote {args.out} {strip.shape[1]}x{strip.shape[0]}")


if __name__ == "__main__":
    main()
