"""Leaderboard throughput: episodes per minute in the world model (vector env at N = 1, 8, 32)
and in the ground-truth sim, at the same resolution, measured in one run.

Usage::

    python -m benchmarks.leaderboard_figures --bundle models/default --judge models/probe --cores 2

Each measurement runs a fresh suite (random policy, 40-step episodes, lift/push/stack/place
starts, ``--batches`` full batches of N episodes) through ``benchmarks.runner.run_suite``
exactly as ``wmgym bench leaderboard`` does, loading the models and judging included, for
each world-model setting in ``--settings`` (an autocast dtype, optionally ``xK`` for K
denoising steps instead of the bundle's, optionally ``+latents`` for the probe judge reading
the world model's latents instead of decoding and encoding frames). A warm-up first renders
every start the world-model measurements use (in the sim, once per suite, cached in its
directory) so that they time the episodes. The sim is timed ``--sim-runs`` times, first and last
(and evenly between), because this VM's speed drifts by up to 25% within a run; the ratios use
its fastest run, so drift can only understate them. Writes
``benchmarks/results/leaderboard_figures.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.runner import RunOptions, run_suite
from benchmarks.suite import suite_from_dict

RESULTS = Path(__file__).parent / "results"
TASKS = ["lift", "stack", "push", "place"]


def suite_for(
    world: dict, episodes: int, judge: str, length: int, judge_inputs: str = "frames"
) -> dict:
    seeds = list(range(-(-episodes // len(TASKS))))
    return {
        "name": "throughput",
        "world": world,
        "tasks": TASKS,
        "seeds": seeds,
        "episode_length": length,
        "judge": {"spec": "probe", "path": judge, "options": {"inputs": judge_inputs}},
        "policies": [{"name": "random", "spec": "random"}],
    }


def parse_setting(text: str) -> tuple[str, int | None, str]:
    """``"bf16"`` -> ("bf16", None, "frames"); ``"bf16x2"`` -> ("bf16", 2 denoising steps,
    "frames"); ``"bf16x1+latents"`` -> ("bf16", 1, "latents": the probe reads latents)."""
    text, _, inputs = text.strip().partition("+")
    dtype, _, steps = text.partition("x")
    return dtype, int(steps) if steps else None, inputs or "frames"


def describe_setting(dtype: str, num_steps: int | None, inputs: str) -> str:
    """``fp32 (default)``, ``bf16, 1 steps, judge reads latents``."""
    words = [dtype] + ([f"{num_steps} steps"] if num_steps else [])
    words += ["judge reads latents"] if inputs == "latents" else []
    return ", ".join(words) + (" (default)" if len(words) == 1 and dtype == "fp32" else "")


def episodes_per_minute(raw: dict, out: Path, options: RunOptions) -> float:
    suite = suite_from_dict(raw)
    started = time.perf_counter()
    log = run_suite(suite, out, options)
    return 60 * len(log) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--judge", default="models/probe", help="probe judge directory")
    parser.add_argument("--sizes", default="1,8,32")
    parser.add_argument("--batches", type=int, default=2, help="batches of N episodes per N")
    parser.add_argument(
        "--settings",
        default="fp32,bf16,bf16x2",
        help="world-model settings: autocast dtype, optionally xK for K denoising steps, "
        "optionally +latents for the probe judge reading latents (e.g. fp32,bf16x1+latents)",
    )
    parser.add_argument(
        "--sim-episodes",
        type=int,
        default=32,
        help="sim episodes (enough that worker start-up weighs little)",
    )
    parser.add_argument(
        "--sim-runs", type=int, default=2, help="times the sim is timed (first, last, between)"
    )
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--cores",
        type=int,
        default=1,
        help="cores each world may use: torch threads for the world model, worker processes "
        "for the sim (whose episodes are single-threaded)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.cores)
    wm_options = RunOptions(progress=False, threads=args.cores)
    sim_options = RunOptions(progress=False, workers=args.cores)
    sizes = [int(s) for s in args.sizes.split(",")]
    figures: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}; each world uses {args.cores} core(s)",
        "date": time.strftime("%Y-%m-%d"),
        "bundle": args.bundle,
        "sim_episodes": args.sim_episodes,
        "episode_length": args.length,
        "world_model": {},
    }
    settings = [parse_setting(s) for s in args.settings.split(",")]
    episodes = {n: max(args.batches * n, 4) for n in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        starts = tmp / "warm"  # render every start once and load the models (not timed)
        warm = suite_for({"type": "world_model", "bundle": args.bundle, "num_envs": 4},
                         max(episodes.values()), args.judge, 1)  # fmt: skip
        run_suite(suite_from_dict(warm), starts, wm_options)
        sim_suite = suite_for({"type": "sim", "bundle": None}, args.sim_episodes, args.judge,
                              args.length)  # fmt: skip
        measurements = [(dtype, steps, inputs, n) for dtype, steps, inputs in settings
                        for n in sizes]  # fmt: skip
        # the sim runs first, last and evenly between the world-model measurements
        sim_after = {round(i * len(measurements) / max(1, args.sim_runs - 1))
                     for i in range(1, args.sim_runs)}  # fmt: skip
        figures["sim_runs"] = []

        def time_sim() -> None:
            out = tmp / f"sim{len(figures['sim_runs'])}"
            figures["sim_runs"].append(episodes_per_minute(sim_suite, out, sim_options))
            print(f"sim: {figures['sim_runs'][-1]:.1f} episodes/min")

        time_sim()
        for done, (dtype, num_steps, inputs, n) in enumerate(measurements, start=1):
            setting = describe_setting(dtype, num_steps, inputs)
            world = {"type": "world_model", "bundle": args.bundle, "num_envs": n}
            world.update(dtype=dtype, num_steps=num_steps)
            out = tmp / f"wm{n}-{dtype}-{num_steps}-{inputs}"
            (out / "starts").mkdir(parents=True)
            for png in (starts / "starts").iterdir():  # reuse the rendered starts
                (out / "starts" / png.name).write_bytes(png.read_bytes())
            rate = episodes_per_minute(
                suite_for(world, episodes[n], args.judge, args.length, inputs), out, wm_options
            )
            figures["world_model"][f"{n} {setting}"] = {"n": n, "setting": setting, "rate": rate}
            print(f"world model N={n} {setting}: {rate:.1f} episodes/min")
            if done in sim_after:
                time_sim()
        figures["sim"] = max(figures["sim_runs"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "leaderboard_figures.json").write_text(json.dumps(figures, indent=1))
    lines = [
        f"Machine: {figures['machine']}; {figures['date']}; bundle {args.bundle}; "
        f"{args.length}-step episodes, random policy, probe judge included; "
        f"{args.batches} batches of N episodes per N (at least 4); {args.sim_episodes} sim "
        f"episodes on {args.cores} worker process(es), timed {len(figures['sim_runs'])} times "
        f"({', '.join(f'{r:.1f}' for r in figures['sim_runs'])} episodes/min; the ratios use "
        "the fastest).",
        "",
        "| world | setting | episodes/min | vs sim |",
        "|---|---|---|---|",
        f"| ground-truth sim (64 px) | fp64 (MuJoCo) | {figures['sim']:.1f} | 1.00x |",
        *[
            f"| world model, vector env N={m['n']} | {m['setting']} | {m['rate']:.1f} | "
            f"{m['rate'] / figures['sim']:.2f}x |"
            for m in figures["world_model"].values()
        ],
    ]
    (args.out / "leaderboard_figures.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
