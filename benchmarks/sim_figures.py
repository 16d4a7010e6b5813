"""Figures of the ground-truth sim: collection throughput, expert success, quality-knob spread.

Usage::

    python -m benchmarks.sim_figures                       # everything (about 20 min on 2 cores)
    python -m benchmarks.sim_figures --layouts 20 --quality-episodes 8   # a quick look

Writes ``benchmarks/results/sim_figures.json`` and ``.md`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from benchmarks.metrics import wilson_interval

RESULTS = Path(__file__).parent / "results"
QUALITY_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _make_env(family: str, resolution: int = 64):
    import gymnasium as gym

    import wm_env

    return gym.make(wm_env.sim_env_id(family), resolution=resolution)


def step_throughput(resolution: int, steps: int = 150) -> float:
    """Env steps per second on one core: expert actions, physics and rendering (5 Hz env)."""
    from wm_env.sim.experts import ExpertQuality
    from wm_env.sim.rollout import make_expert

    env = _make_env("lift", resolution)
    env.reset(seed=0)
    for _ in range(10):  # the first steps after a reset are slow: warm up before timing
        env.step(np.zeros(7, dtype=np.float32))
    done, seed, start = 0, 1, time.perf_counter()
    while done < steps:
        env.reset(seed=seed)
        expert = make_expert(env, ExpertQuality(), seed)
        for _ in range(env.spec.max_episode_steps):
            env.step(expert.act(env.unwrapped.privileged_state()))
            done += 1
        seed += 1
    return done / (time.perf_counter() - start)


def collect_throughput(resolution: int, episodes: int = 6) -> float:
    """Env steps per second on one core through ``wmgym data collect`` (video encoding, parquet)."""
    from wm_env.sim.collect import CollectConfig, collect

    with tempfile.TemporaryDirectory() as tmp:
        config = CollectConfig(
            family="lift", episodes=1, out=Path(tmp), resolution=resolution, workers=1
        )
        collect(config, progress=False)  # builds the sim (not timed)
        start = time.perf_counter()
        config = CollectConfig(
            family="lift", episodes=1 + episodes, out=Path(tmp), resolution=resolution, workers=1
        )
        dataset = collect(config, progress=False)
        elapsed = time.perf_counter() - start
        steps = sum(dataset.length(ep) - 1 for ep in range(1, 1 + episodes))
    return steps / elapsed


def success_rates(job: tuple[str, float, list[int]]) -> tuple[str, float, list[bool]]:
    """(family, quality level, successes over the given seeds), in one worker process."""
    from wm_env.sim.experts import ExpertQuality
    from wm_env.sim.rollout import run_expert

    family, level, seeds = job
    env = _make_env(family)
    outcomes = []
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        rollout = run_expert(
            env, obs, info, ExpertQuality.from_level(level), seed + 1, env.spec.max_episode_steps
        )
        outcomes.append(rollout.success)
    env.close()
    return family, level, outcomes


def _run_jobs(jobs, workers: int):
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(success_rates, jobs))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--layouts", type=int, default=100, help="seeded layouts per family for expert success"
    )
    parser.add_argument(
        "--quality-episodes", type=int, default=20, help="episodes per family and quality level"
    )
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--parts",
        default="throughput,success,quality",
        help="comma-separated subset to (re)measure",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    from wm_env.sim.tasks import FAMILIES

    path = args.out / "sim_figures.json"
    figures: dict = json.loads(path.read_text()) if path.exists() else {}
    figures |= {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    if "throughput" in parts:
        figures["throughput"] = {
            str(res): {
                "env_steps_per_s_per_core": step_throughput(res),
                "collect_steps_per_s_per_core": collect_throughput(res),
            }
            for res in (64, 128)
        }
        print(json.dumps(figures["throughput"], indent=1))

    if "success" in parts:
        seeds = list(range(10_000, 10_000 + args.layouts))
        half = len(seeds) // 2
        jobs = [(f, 1.0, part) for f in FAMILIES for part in (seeds[:half], seeds[half:])]
        expert: dict[str, list[bool]] = {}
        for family, _, outcomes in _run_jobs(jobs, args.workers):
            expert.setdefault(family, []).extend(outcomes)
        figures["expert_success"] = {
            f: {
                "success": float(np.mean(o)),
                "n": len(o),
                "wilson95": wilson_interval(sum(o), len(o)),
            }
            for f, o in expert.items()
        }
    if "quality" in parts:
        qseeds = list(range(20_000, 20_000 + args.quality_episodes))
        spread: dict[str, dict[str, float]] = {}
        jobs = [(f, q, qseeds) for f in FAMILIES for q in QUALITY_LEVELS]
        for family, level, outcomes in _run_jobs(jobs, args.workers):
            spread.setdefault(family, {})[f"{level:g}"] = float(np.mean(outcomes))
        figures["quality_spread"] = {"episodes_per_cell": len(qseeds), "success": spread}

    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2))
    _write_markdown(figures, args.out / "sim_figures.md")


def _write_markdown(figures: dict, path: Path) -> None:
    md = [
        f"Machine: {figures['machine']}; {figures['date']}.",
        "",
        "| resolution | env steps/s/core | collect steps/s/core |",
        "|---|---|---|",
    ]
    for res, t in figures.get("throughput", {}).items():
        md.append(
            f"| {res}x{res} | {t['env_steps_per_s_per_core']:.1f} | {t['collect_steps_per_s_per_core']:.1f} |"
        )
    md += ["", "| family | expert success | layouts | Wilson 95% |", "|---|---|---|---|"]
    for f, e in figures.get("expert_success", {}).items():
        md.append(
            f"| {f} | {e['success']:.2f} | {e['n']} | [{e['wilson95'][0]:.2f}, {e['wilson95'][1]:.2f}] |"
        )
    md += [
        "",
        "| family | " + " | ".join(f"q={q:g}" for q in QUALITY_LEVELS) + " |",
        "|---" * (len(QUALITY_LEVELS) + 1) + "|",
    ]
    for f, row in figures.get("quality_spread", {}).get("success", {}).items():
        md.append(f"| {f} | " + " | ".join(f"{row[f'{q:g}']:.2f}" for q in QUALITY_LEVELS) + " |")
    path.write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
