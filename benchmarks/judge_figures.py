"""How far the probe judge can be trusted: accuracy / TPR / FPR on held-out sim episodes and on
world-model replays of their actions, and seconds per verdict.

Usage::

    python -m benchmarks.judge_figures --probe models/probe --bundle models/default --dataset data/sim64

Runs :func:`judges.calibrate.calibrate` on the held-out split every stage uses (10%, split seed
0) and writes ``benchmarks/results/judge_figures.json`` and ``.md``. Re-runnable: after the
world model in ``--bundle`` changes, run it again (the replay cache in ``--work`` is keyed by
the bundle's hash, so new replays are generated). Give several ``--judge`` paths / URLs to add
other judges (a local VLM checkpoint, a served model with ``--served-model``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--probe", type=Path, default=Path("models/probe"))
    parser.add_argument("--judge", nargs="*", default=[], help="more judges (paths or URLs)")
    parser.add_argument("--served-model", default="", help="model name for URL judges")
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--dataset", type=Path, default=Path("data/sim64"))
    parser.add_argument("--episodes", type=int, default=0, help="first N held-out (0: all)")
    parser.add_argument("--wm-temperature", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("outputs/judge_figures"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from judges.calibrate import CalibrateConfig, calibrate, markdown_table
    from wm_env.bundle import bundle_sha256, read_config
    from wm_env.dataset.split import DataConfig
    from wm_env.options import WorldModelOptions

    config = CalibrateConfig(
        judge=(str(args.probe), *args.judge),
        data=DataConfig(dataset=args.dataset),
        bundle=args.bundle,
        episodes=args.episodes,
        served_model=args.served_model,
        wm=WorldModelOptions(temperature=args.wm_temperature),
        out=args.work,
    )
    results = calibrate(config)
    dynamics = read_config(args.bundle)["dynamics"]
    probe = read_config(args.probe)["probe"]
    real = next(s for s in results["summary"] if s["source"] == "real")
    base_rate = real["positives"] / max(1, real["positives"] + real["negatives"])
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
        "bundle": str(args.bundle),
        "bundle_sha256": bundle_sha256(args.bundle),
        "dynamics_steps": dynamics.get("steps"),
        "wm_temperature": args.wm_temperature
        if args.wm_temperature is not None
        else dynamics.get("temperature", 1.0),
        "probe": str(args.probe),
        "probe_training": {k: probe.get(k) for k in ("steps", "train_seconds", "metrics")},
        "success_rate_held_out": base_rate,
        **{k: results[k] for k in ("judges", "episodes", "summary", "agreement")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "judge_figures.json").write_text(
        json.dumps(json.loads((args.work / "calibration.json").read_text()) | figures, indent=2)
    )
    md = [
        f"Machine: {figures['machine']}; {figures['date']}; bundle {figures['bundle']} "
        f"(sha256 {figures['bundle_sha256'][:12]}, dynamics trained {figures['dynamics_steps']} "
        f"steps, sampled at temperature {figures['wm_temperature']}).",
        "",
        markdown_table(results["summary"]),
        "",
        f"Held-out episodes: {len(results['episodes'])} (split seed 0, 10%); {base_rate:.0%} of "
        f"them succeed, so always answering 'failure' scores accuracy {1 - base_rate:.3f} "
        "(TPR 0, FPR 0). Replays: the world model starts from each episode's first frame and "
        "follows its recorded actions; verdicts are scored against the recorded episode's label.",
    ]
    (args.out / "judge_figures.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
