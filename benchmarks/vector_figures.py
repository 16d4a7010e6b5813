"""Throughput of the batched vector env against N single envs stepped in a loop.

Usage::

    python -m benchmarks.vector_figures --bundle models/default --starts data/sim64 --threads 2

For each N it times the vector env (one batched model call per step) and N single
``WorldModelEnv`` instances stepped one after the other, in the same run, and reports env steps
per second and their ratio, for each autocast dtype in ``--dtypes`` (both sides in the same
dtype). Writes ``benchmarks/results/vector_figures.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import wm_env

RESULTS = Path(__file__).parent / "results"


def vector_steps_per_second(
    bundle: Path, starts, n: int, steps: int, warmup: int, dtype: str | None
) -> float:
    env = gym.make_vec(
        wm_env.WORLD_MODEL_ENV_ID,
        num_envs=n,
        vectorization_mode="vector_entry_point",
        model=bundle,
        starts=starts,
        dtype=dtype,
    )
    env.reset(seed=0)
    actions = np.zeros((n, 7), dtype=np.float32)
    for _ in range(warmup):
        env.step(actions)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(actions)
    return n * steps / (time.perf_counter() - start)


def single_steps_per_second(
    bundle: Path, starts, n: int, steps: int, warmup: int, dtype: str | None
) -> float:
    from wm_env.world_model import WorldModel

    envs = [
        gym.make(
            wm_env.WORLD_MODEL_ENV_ID,
            model=WorldModel.from_pretrained(bundle, dtype=dtype),
            starts=starts,
        )
        for _ in range(n)
    ]
    for i, env in enumerate(envs):
        env.reset(seed=i)
        for _ in range(warmup):
            env.step(np.zeros(7, dtype=np.float32))
    action = np.zeros(7, dtype=np.float32)
    start = time.perf_counter()
    for _ in range(steps):
        for env in envs:
            env.step(action)
    return n * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--starts", default="data/sim64", help="dataset dir or PNG+JSON folder")
    parser.add_argument("--sizes", default="1,4,16,64")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (per env)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--dtypes",
        default="fp32,bf16",
        help="autocast dtypes to measure (bf16 pays off on CPUs with avx512_bf16 or AMX)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from wm_env.envs.starts import StartSet

    starts = StartSet.load(args.starts)
    figures: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
        "bundle": str(args.bundle),
        "sizes": {},
    }
    for dtype in args.dtypes.split(","):
        for n in (int(x) for x in args.sizes.split(",")):
            timing = (args.bundle, starts, n, args.steps, args.warmup, dtype)
            vector = vector_steps_per_second(*timing)
            single = single_steps_per_second(*timing)
            figures["sizes"][f"{n} {dtype}"] = {
                "n": n,
                "dtype": dtype,
                "vector_steps_per_s": vector,
                "single_loop_steps_per_s": single,
                "speedup": vector / single,
            }
            print(
                f"N={n} {dtype}: vector {vector:.1f} steps/s, {n} single envs {single:.1f} "
                f"steps/s, {vector / single:.2f}x"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vector_figures.json").write_text(json.dumps(figures, indent=2))
    md = [
        f"Machine: {figures['machine']}; {figures['date']}; bundle {figures['bundle']}; "
        f"{args.warmup} warm-up and {args.steps} timed steps per measurement.",
        "",
        "| N | dtype | vector env steps/s | N single envs steps/s | speedup |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {v['n']} | {v['dtype']} | {v['vector_steps_per_s']:.1f} | "
        f"{v['single_loop_steps_per_s']:.1f} | {v['speedup']:.2f}x |"
        for v in figures["sizes"].values()
    ]
    (args.out / "vector_figures.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
