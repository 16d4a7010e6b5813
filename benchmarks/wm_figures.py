"""Speed figures of a world-model bundle: training throughput, generation latency, KV cache, FLOPs.

Usage::

    python -m benchmarks.wm_figures --bundle models/default

Writes ``benchmarks/results/wm_figures.json`` and ``.md``. Every ratio is measured in one run.
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


def matmul_flops_per_second(n: int = 1024, repeats: int = 10) -> float:
    """Achieved fp32 FLOP/s of an ``n x n`` matmul on this machine (the reference peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def training_throughput(config: dict, batch: int = 32, steps: int = 5) -> float:
    """Clips per second of DiT training steps (forward, backward, AdamW) on random latents."""
    from wm_env.model.dit import DiT, DiTConfig
    from wm_env.model.flow import make_scheduler, training_loss

    dynamics = config["dynamics"]
    model = DiT(DiTConfig(**dynamics["dit"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler_options = dict(dynamics["scheduler"])
    scheduler = make_scheduler(scheduler_options.pop("name"), **scheduler_options)
    frames = dynamics["history"] + dynamics["future"]
    x = torch.randn(batch, frames, dynamics["tokens"], len(dynamics["latent_mean"]))
    actions = torch.randn(batch, frames, model.config.action_dim)
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        loss = training_loss(model, scheduler, x, dynamics["history"], actions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def generation_latency(model, frames: np.ndarray, batch: int, steps: int = 5) -> float:
    """Seconds per generated frame (per step of the whole batch) after a warm-up step."""
    starts = np.repeat(frames[None], batch, axis=0)
    model.reset(starts, seed=0)
    action = np.zeros((batch, 7), dtype=np.float32)
    model.step(action)
    start = time.perf_counter()
    for _ in range(steps):
        model.step(action)
    return (time.perf_counter() - start) / steps


def rollout_seconds(model, frames: np.ndarray, length: int = 40, batch: int = 4) -> float:
    """Seconds for a ``length``-step rollout of ``batch`` episodes."""
    model.reset(np.repeat(frames[None], batch, axis=0), seed=0)
    action = np.zeros((batch, 7), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(length):
        model.step(action)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--batches", default="1,4,16,64", help="batch sizes for generation latency")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from wm_env.world_model import WorldModel

    model = WorldModel.from_pretrained(args.bundle)
    cached = WorldModel.from_pretrained(args.bundle)
    uncached = WorldModel.from_pretrained(args.bundle, use_cache=False)
    start_frame = model.decode(torch.zeros(1, *model.latent_shape))[0]  # any valid frame
    figures: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
        "bundle": str(args.bundle),
        "dit_parameters": model.dit.num_parameters(),
    }
    figures["training_clips_per_s"] = training_throughput(model.config)
    figures["ms_per_frame"] = {}
    for batch in (int(b) for b in args.batches.split(",")):
        seconds = generation_latency(model, start_frame, batch)
        figures["ms_per_frame"][str(batch)] = {
            "per_batch_step": 1000 * seconds,
            "per_frame": 1000 * seconds / batch,
        }
    with_cache = rollout_seconds(cached, start_frame)
    without = rollout_seconds(uncached, start_frame)
    figures["rollout_40_steps_s"] = {
        "with_cache": with_cache,
        "without_cache": without,
        "speedup": without / with_cache,
    }
    dit, history = model.dit, model.history
    flops_cached = dit.flops_per_frame(history, num_steps=model.num_steps, cached=True)
    flops_full = dit.flops_per_frame(history, num_steps=model.num_steps, cached=False)
    matmul = matmul_flops_per_second()
    per_frame_s = (
        figures["ms_per_frame"]["1"]["per_frame"] / 1000
        if "1" in figures["ms_per_frame"]
        else float("nan")
    )
    biggest = max(figures["ms_per_frame"], key=int)
    per_frame_big = figures["ms_per_frame"][biggest]["per_frame"] / 1000
    figures["flops"] = {
        "dit_flops_per_frame_cached": flops_cached,
        "dit_flops_per_frame_recomputed": flops_full,
        "matmul_flops_per_s": matmul,
        "achieved_flops_per_s_batch1": flops_cached / per_frame_s,
        f"achieved_flops_per_s_batch{biggest}": flops_cached / per_frame_big,
        "fraction_of_matmul_batch1": flops_cached / per_frame_s / matmul,
        f"fraction_of_matmul_batch{biggest}": flops_cached / per_frame_big / matmul,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wm_figures.json").write_text(json.dumps(figures, indent=2))
    md = [
        f"Machine: {figures['machine']}; {figures['date']}; bundle {figures['bundle']} ({figures['dit_parameters'] / 1e6:.2f}M DiT parameters).",
        "",
        f"- DiT training: {figures['training_clips_per_s']:.1f} clips/s (batch 32).",
        "",
        "| batch | ms per batch step | ms per frame |",
        "|---|---|---|",
        *[
            f"| {b} | {v['per_batch_step']:.1f} | {v['per_frame']:.2f} |"
            for b, v in figures["ms_per_frame"].items()
        ],
        "",
        f"- 40-step rollout (batch 4): {with_cache:.2f} s with the KV cache, {without:.2f} s without: {without / with_cache:.2f}x.",
        f"- DiT FLOPs per generated frame ({model.num_steps} denoising steps): {flops_cached / 1e9:.3f} G with the cache, {flops_full / 1e9:.3f} G recomputing the context.",
        f"- fp32 matmul on this machine: {matmul / 1e9:.1f} GFLOP/s; DiT achieved {flops_cached / per_frame_s / 1e9:.2f} GFLOP/s at batch 1 "
        f"({100 * flops_cached / per_frame_s / matmul:.1f}% of matmul) and {flops_cached / per_frame_big / 1e9:.2f} GFLOP/s at batch {biggest} "
        f"({100 * flops_cached / per_frame_big / matmul:.1f}%). Per-frame time includes encoding-free decoding by the VAE, which the DiT count leaves out.",
    ]
    (args.out / "wm_figures.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
