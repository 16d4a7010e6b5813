"""Planning time of the CEM agent per action, for several sample budgets and horizons.

Usage::

    python -m benchmarks.cem_figures --bundle models/default --data data/sim64

For each (samples, horizon) cell, a :class:`policies.cem.CEMPolicy` that replans every step
(``replan_every=1``) acts on the first frame of a dataset episode towards that episode's last
frame; the figure is the wall time of one ``act`` call (reset of the planner's model from the
observed frame + ``iterations`` batched world-model rollouts of ``samples`` sequences of
``horizon`` steps, without pixel decoding), the median over ``--repeats`` calls after a warm-up.
Elites are ``max(1, samples // 8)``. Writes ``benchmarks/results/cem_figures.json``, ``.md``
and ``.png``.
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


def seconds_per_action(policy, obs: dict, repeats: int) -> float:
    """Median wall time of ``policy.act(obs)`` over ``repeats`` fresh episodes."""
    times = []
    for _ in range(repeats):
        policy.reset(obs["instruction"])
        start = time.perf_counter()
        policy.act(obs)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def plot(figures: dict, path: Path) -> None:
    """Seconds per action against horizon, one line per sample budget (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for samples, row in figures["cells"].items():
        horizons = sorted(int(h) for h in row)
        ax.plot(
            horizons,
            [row[str(h)]["seconds_per_action"] for h in horizons],
            marker="o",
            label=f"{samples} samples",
        )
    ax.set_yscale("log")
    ax.set_xlabel("planning horizon (steps)")
    ax.set_ylabel("seconds per action")
    ax.set_xticks(sorted({int(h) for row in figures["cells"].values() for h in row}))
    ax.set_title(f"CEM planning, {figures['iterations']} iterations ({figures['device']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, default=Path("data/sim64"))
    parser.add_argument("--episode", type=int, default=0)
    parser.add_argument("--samples", default="16,64,256")
    parser.add_argument("--horizons", default="1,2,3,4")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per cell")
    parser.add_argument("--max-rollouts", type=int, default=None, help="rollouts per model call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from policies.cem import CEMConfig, CEMPolicy, episode_goal
    from wm_env.dataset.lerobot import LeRobotDataset
    from wm_env.world_model import WorldModel

    model = WorldModel.from_pretrained(args.bundle, device=args.device)
    dataset = LeRobotDataset(args.data)
    obs = {
        "image": dataset.frames(args.episode)[0],
        "instruction": dataset.instruction(args.episode),
    }
    goal = episode_goal(dataset, args.episode)
    figures: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "device": args.device,
        "date": time.strftime("%Y-%m-%d"),
        "bundle": str(args.bundle),
        "denoising_steps": model.num_steps,
        "iterations": args.iterations,
        "repeats": args.repeats,
        "cells": {},
    }

    def policy_for(samples: int, horizon: int) -> CEMPolicy:
        config = CEMConfig(
            samples=samples,
            elites=max(1, samples // 8),
            iterations=args.iterations,
            horizon=horizon,
        )
        return CEMPolicy(model, goal=goal, config=config, max_rollouts=args.max_rollouts)

    seconds_per_action(policy_for(4, 1), obs, 1)  # warm-up
    for samples in (int(x) for x in args.samples.split(",")):
        for horizon in (int(x) for x in args.horizons.split(",")):
            seconds = seconds_per_action(policy_for(samples, horizon), obs, args.repeats)
            steps = samples * horizon * args.iterations  # model steps of one rollout batch
            figures["cells"].setdefault(str(samples), {})[str(horizon)] = {
                "seconds_per_action": seconds,
                "rollout_steps_per_second": steps / seconds,
            }
            print(
                f"samples={samples} horizon={horizon}: {seconds:.2f} s/action ({steps / seconds:.0f} rollout steps/s)",
                flush=True,
            )

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cem_figures.json").write_text(json.dumps(figures, indent=2))
    horizons = sorted({int(h) for row in figures["cells"].values() for h in row})
    md = [
        f"Machine: {figures['machine']}; device {figures['device']}; {figures['date']}; bundle "
        f"{figures['bundle']} ({figures['denoising_steps']} denoising steps); CEM "
        f"{figures['iterations']} iterations, elites = samples / 8; median of {figures['repeats']} calls.",
        "",
        "Seconds of planning per action (replanning every step):",
        "",
        "| samples | " + " | ".join(f"horizon {h}" for h in horizons) + " |",
        "|---" * (len(horizons) + 1) + "|",
    ]
    for samples, row in figures["cells"].items():
        cells = [
            f"{row[str(h)]['seconds_per_action']:.2f}" if str(h) in row else "" for h in horizons
        ]
        md.append(f"| {samples} | " + " | ".join(cells) + " |")
    (args.out / "cem_figures.md").write_text("\n".join(md) + "\n")
    plot(figures, args.out / "cem_figures.png")
    print("\n".join(md))


if __name__ == "__main__":
    main()
