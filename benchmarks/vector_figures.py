"""Throughput of the batched vector env against N single envs stepped in a loop.

Usage::

    python -m benchmarks.vector_figures --bundle models/default --starts data/sim64 --threads 2

For each N it builds, for each autocast dtype in ``--dtypes``, the vector env (one batched
model call per step) and N single ``WorldModelEnv`` instances, then times them in interleaved
rounds (every setup steps ``--steps`` times per round), so that a machine whose speed drifts
during the run slows every setup alike; each setup's rate is its median round. It reports env
steps per second, the speedup of the vector env over the single envs in the same dtype, and over
the fastest single-env setting of any dtype. Writes ``benchmarks/results/<stem>.json`` and
``.md`` (``--stem``, default ``vector_figures``).
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


class VectorSetup:
    """N episodes in one vector env: one batched model call per step.

    ``model_options`` (``dtype``, ``num_steps``, ``decoder``) go to the model, as for
    :class:`SingleSetup`.
    """

    def __init__(self, bundle: Path, starts, n: int, **model_options) -> None:
        self.n = n
        self.env = gym.make_vec(
            wm_env.WORLD_MODEL_ENV_ID,
            num_envs=n,
            vectorization_mode="vector_entry_point",
            model=bundle,
            starts=starts,
            **model_options,
        )
        self.env.reset(seed=0)
        self.actions = np.zeros((n, 7), dtype=np.float32)

    def step(self) -> None:
        self.env.step(self.actions)


class SingleSetup:
    """N single envs, each with its own model (``WorldModel.from_pretrained(bundle,
    **model_options)``), stepped one after the other."""

    def __init__(self, bundle: Path, starts, n: int, **model_options) -> None:
        from wm_env.world_model import WorldModel

        self.n = n
        self.envs = [
            gym.make(
                wm_env.WORLD_MODEL_ENV_ID,
                model=WorldModel.from_pretrained(bundle, **model_options),
                starts=starts,
            )
            for _ in range(n)
        ]
        for i, env in enumerate(self.envs):
            env.reset(seed=i)
        self.action = np.zeros(7, dtype=np.float32)

    def step(self) -> None:
        for env in self.envs:
            env.step(self.action)


def interleaved_steps_per_second(
    setups: dict[str, VectorSetup | SingleSetup], steps: int, warmup: int, rounds: int
) -> dict[str, float]:
    """Env steps per second of each setup: the median over ``rounds`` interleaved rounds.

    The median, not the total, so that one round slowed by the machine (this 2-core VM's speed
    drifts by 10-25% within minutes) does not decide a ratio.
    """
    for setup in setups.values():
        for _ in range(warmup):
            setup.step()
    rates: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, setup in setups.items():
            start = time.perf_counter()
            for _ in range(steps):
                setup.step()
            rates[name].append(setup.n * steps / (time.perf_counter() - start))
    return {name: float(np.median(values)) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--starts", default="data/sim64", help="dataset dir or PNG+JSON folder")
    parser.add_argument("--sizes", default="1,4,16,64")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setup and round")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved timing rounds (the median counts)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (per setup)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--dtypes",
        default="fp32,bf16",
        help="autocast dtypes to measure (bf16 pays off on CPUs with avx512_bf16 or AMX)",
    )
    parser.add_argument(
        "--num-steps", type=int, default=None, help="denoising steps (default: the bundle's)"
    )
    parser.add_argument(
        "--decoder",
        default=None,
        help="which of the bundle's decoders renders frames (e.g. light; default: its own)",
    )
    parser.add_argument(
        "--stem", default="vector_figures", help="file name of the results (.json and .md)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from wm_env.envs.starts import StartSet

    starts = StartSet.load(args.starts)
    dtypes = args.dtypes.split(",")
    figures: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
        "bundle": str(args.bundle),
        "steps": args.steps,
        "rounds": args.rounds,
        "num_steps": args.num_steps,
        "decoder": args.decoder,
        "sizes": {},
    }
    for n in (int(x) for x in args.sizes.split(",")):
        setups: dict[str, VectorSetup | SingleSetup] = {}
        for dtype in dtypes:
            options = {"dtype": dtype, "num_steps": args.num_steps, "decoder": args.decoder}
            setups[f"vector {dtype}"] = VectorSetup(args.bundle, starts, n, **options)
            setups[f"single {dtype}"] = SingleSetup(args.bundle, starts, n, **options)
        rates = interleaved_steps_per_second(setups, args.steps, args.warmup, args.rounds)
        del setups
        best_single = max(rates[f"single {dtype}"] for dtype in dtypes)
        for dtype in dtypes:
            vector, single = rates[f"vector {dtype}"], rates[f"single {dtype}"]
            figures["sizes"][f"{n} {dtype}"] = {
                "n": n,
                "dtype": dtype,
                "vector_steps_per_s": vector,
                "single_loop_steps_per_s": single,
                "speedup": vector / single,
                "speedup_over_fastest_single": vector / best_single,
            }
            print(
                f"N={n} {dtype}: vector {vector:.1f} steps/s, {n} single envs {single:.1f} "
                f"steps/s, {vector / single:.2f}x (over the fastest single setting "
                f"{vector / best_single:.2f}x)",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.json").write_text(json.dumps(figures, indent=2))
    md = [
        f"Machine: {figures['machine']}; {figures['date']}; bundle {figures['bundle']}"
        f"{'' if args.decoder is None else f', decoder {args.decoder}'}"
        f"{'' if args.num_steps is None else f', {args.num_steps} denoising steps'}; "
        f"{args.warmup} warm-up steps, then {args.rounds} interleaved rounds of {args.steps} "
        "timed steps per setup (median round).",
        "",
        "| N | dtype | vector env steps/s | N single envs steps/s | speedup (same dtype) "
        "| speedup over the fastest single envs |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {v['n']} | {v['dtype']} | {v['vector_steps_per_s']:.1f} | "
        f"{v['single_loop_steps_per_s']:.1f} | {v['speedup']:.2f}x | "
        f"{v['speedup_over_fastest_single']:.2f}x |"
        for v in figures["sizes"].values()
    ]
    (args.out / f"{args.stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
