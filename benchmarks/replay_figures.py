"""The judge on world-model replays of sim episodes, per world-model setting and judge inputs.

Usage::

    python -m benchmarks.replay_figures --sim-dir outputs/agreement_s8/sim --seeds 0 1 2 3 4 5 6 7 \\
        --settings fp32,bf16x1,fp32+latents,bf16x1+latents

Replays the actions of every clean sim episode of a finished agreement run (``<out>/sim``) in the
world model from the same start, as ``wmgym bench agreement`` does, once per setting (the
``--settings`` syntax of ``benchmarks.leaderboard_figures``: an autocast dtype, ``xK`` for K
denoising steps, ``+latents`` for the probe reading latents), and reports the judge's
hallucinated-success rate (sim failures judged successes) and missed-success rate. It separates
what the world model's settings and what the judge's inputs do to the verdicts. Writes
``benchmarks/results/replay_figures.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from benchmarks.leaderboard_figures import describe_setting, parse_setting

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sim-dir", type=Path, default=Path("outputs/agreement/sim"))
    parser.add_argument("--suite", type=Path, default=Path("benchmarks/suites/agreement.yaml"))
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="the run's seeds")
    parser.add_argument("--settings", default="fp32,bf16x1,fp32+latents,bf16x1+latents")
    parser.add_argument("--judge-path", default=None, help="another probe than the suite's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from benchmarks.agreement import judge_replays, replay_summary, replayable
    from benchmarks.bench import LeaderboardConfig, configured_suite
    from benchmarks.episode_log import EpisodeLog
    from benchmarks.runner import LOG_NAME

    if not (args.sim_dir / LOG_NAME).exists():
        raise SystemExit(f"{args.sim_dir} holds no sim run (run `wmgym bench agreement` first)")
    figures: dict = {"date": time.strftime("%Y-%m-%d"), "sim_dir": str(args.sim_dir),
                     "judge_path": args.judge_path, "settings": {}}  # fmt: skip
    for text in args.settings.split(","):
        dtype, num_steps, inputs = parse_setting(text)
        suite = configured_suite(
            LeaderboardConfig(
                suite=args.suite,
                seeds=tuple(args.seeds) if args.seeds else None,
                dtype=None if dtype == "fp32" else dtype,
                num_steps=num_steps,
                judge_path=args.judge_path,
                judge_inputs=inputs,
            )  # fmt: skip
        )
        # a suite's episode keys do not depend on its world: the sim log holds the same keys
        episodes = replayable(EpisodeLog(args.sim_dir / LOG_NAME).rows_for(suite.episode_keys()))
        with tempfile.TemporaryDirectory() as tmp:  # the starts are rendered there
            rows = [r for batch in judge_replays(suite, args.sim_dir, episodes, Path(tmp))
                    for r in batch]  # fmt: skip
        stats = replay_summary(pd.DataFrame(rows))
        setting = describe_setting(dtype, num_steps, inputs)
        figures["settings"][setting] = stats
        print(setting, {k: f"{v['rate']:.3f} of {v['episodes']}" for k, v in stats.items()})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replay_figures.json").write_text(json.dumps(figures, indent=1))
    lines = [
        f"{figures['date']}; world-model replays of the clean sim episodes in {args.sim_dir}"
        f"{'; judge ' + args.judge_path if args.judge_path else ''}.",
        "",
        "| setting | hallucinated success | missed success |",
        "|---|---|---|",
    ]
    for setting, stats in figures["settings"].items():
        cells = [
            f"{s['rate']:.3f} ({round(s['rate'] * s['episodes'])}/{s['episodes']}; "
            f"{s['lo']:.2f}-{s['hi']:.2f})"
            for s in (stats["hallucinated_success"], stats["missed_success"])
        ]
        lines.append(f"| {setting} | {cells[0]} | {cells[1]} |")
    (args.out / "replay_figures.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
