"""Cost per generated frame of several bundles, measured in one run (their ratio is the figure).

    python -m benchmarks.bundle_cost models/default models/state --batch 32 --steps 10

Each bundle's world model is reset on the same start frames (and start states where it reads
them) and stepped with the same zero actions; the bundles take turns, ``--rounds`` times, so
that a machine's drift falls on all of them alike. Reported: the median milliseconds per frame
(decoding included) of each, and each one's ratio to the first. Writes
``benchmarks/results/bundle_cost.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def step_seconds(model, frames: np.ndarray, steps: int) -> float:
    """Seconds per batch step of ``steps`` steps from ``frames`` (B, H, W, 3)."""
    batch = len(frames)
    states = None
    if model.uses_states:  # the middle of the state space: a plausible pose
        space = model.state_space()
        states = ((space.low + space.high) / 2)[None].repeat(batch, 0).astype(np.float32)
    model.reset(frames, seed=0, states=states)
    actions = np.zeros((batch, 7), np.float32)
    model.step(actions)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        model.step(actions)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> dict:
    from wm_env.world_model import WorldModel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "bundle_cost")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {str(b): WorldModel.from_pretrained(b) for b in args.bundles}
    height, width = next(iter(models.values())).image_size
    frames = np.random.default_rng(0).integers(0, 256, (args.batch, height, width, 3), np.uint8)
    runs: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            runs[name].append(step_seconds(model, frames, args.steps) / args.batch * 1000)
    first = next(iter(runs))
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} threads",
        "date": time.strftime("%Y-%m-%d"),
        "batch": args.batch,
        "ms_per_frame": {name: float(np.median(v)) for name, v in runs.items()},
    }
    figures["ratio_to_first"] = {
        name: figures["ms_per_frame"][name] / figures["ms_per_frame"][first] for name in runs
    }
    lines = [f"Machine: {figures['machine']}; {figures['date']}; batch {args.batch}, "
             f"median of {args.rounds} rounds of {args.steps} steps.", "",
             "| bundle | ms per frame | ratio to the first |", "|---|---|---|"]  # fmt: skip
    lines += [
        f"| {name} | {figures['ms_per_frame'][name]:.1f} | {figures['ratio_to_first'][name]:.2f} |"
        for name in runs
    ]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(figures, indent=2))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return figures


if __name__ == "__main__":
    main()
