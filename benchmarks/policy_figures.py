"""Success of trained policies in the ground-truth sim, per policy (training budget) and family.

Usage::

    python -m benchmarks.policy_figures                      # models/policies/small-vla-*
    python -m benchmarks.policy_figures --policies models/policies/small-vla-2k --episodes 10

Each policy runs ``--episodes`` seeded episodes per task family in ``wm_env/Tabletop-*-v0``
(layouts ``seed-start, seed-start + 1, ...``: the default 10000 keeps clear of the dataset's
seeds 0..399), for the family's time limit, executing every action chunk it returns. Success
is the sim's predicate at the last step; intervals are 95% Wilson intervals. Writes
``benchmarks/results/policy_figures.json``, ``.md`` and a bar plot ``policy_figures.png``.
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

from benchmarks.metrics import wilson_interval
from policies.base import check_action

RESULTS = Path(__file__).parent / "results"
FAMILIES = ("lift", "stack", "push", "place")


def run_sim_episode(env, policy, seed: int, steps: int) -> bool:
    """One seeded episode of ``policy`` in a sim env; return the final success predicate."""
    obs, info = env.reset(seed=seed)
    policy.reset(obs["instruction"])
    done = 0
    while done < steps:
        for action in check_action(policy.act(obs), name=policy.name):
            obs, _, _, _, info = env.step(action)
            done += 1
            if done == steps:
                break
    return bool(info["success"])


def evaluate(
    policy, families: list[str], episodes: int, seed_start: int, steps: int | None = None
) -> dict[str, dict]:
    """``{family: {successes, episodes, rate, wilson}}`` for one policy."""
    import gymnasium as gym

    import wm_env

    out = {}
    for family in families:
        env = gym.make(wm_env.sim_env_id(family))
        limit = steps or env.spec.max_episode_steps
        wins = [run_sim_episode(env, policy, seed_start + i, limit) for i in range(episodes)]
        env.close()
        k = int(sum(wins))
        out[family] = {
            "successes": k,
            "episodes": episodes,
            "rate": k / episodes,
            "wilson": list(wilson_interval(k, episodes)),
            "steps": limit,
        }
        print(f"  {family}: {k}/{episodes}", flush=True)
    return out


def plot(figures: dict, path: Path) -> None:
    """Grouped bars: success per family, one bar per policy, Wilson intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(figures["policies"])
    families = figures["families"]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, name in enumerate(names):
        rows = [figures["policies"][name]["success"][f] for f in families]
        rate = np.array([r["rate"] for r in rows])
        low = rate - np.array([r["wilson"][0] for r in rows])
        high = np.array([r["wilson"][1] for r in rows]) - rate
        steps = figures["policies"][name]["train_steps"]
        ax.bar(
            np.arange(len(families)) + (i - (len(names) - 1) / 2) * width,
            rate,
            width,
            yerr=[low, high],
            capsize=3,
            label=f"{name} ({steps} steps)",
        )
    ax.set_xticks(np.arange(len(families)), families)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success in the sim")
    ax.set_title(f"Small VLA per training budget ({figures['episodes']} layouts per family)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(figures: dict) -> str:
    families = figures["families"]
    lines = [
        f"Machine: {figures['machine']}; {figures['date']}. {figures['episodes']} seeded layouts "
        f"per family (seeds {figures['seed_start']}..), 95% Wilson intervals.",
        "",
        "| policy | training steps | train minutes | " + " | ".join(families) + " | all |",
        "|---|---|---|" + "---|" * (len(families) + 1),
    ]
    for name, row in figures["policies"].items():
        cells = [
            f"{r['rate']:.2f} [{r['wilson'][0]:.2f}, {r['wilson'][1]:.2f}]"
            for r in (row["success"][f] for f in families)
        ]
        total = row["overall"]
        cells.append(f"{total['rate']:.2f} [{total['wilson'][0]:.2f}, {total['wilson'][1]:.2f}]")
        minutes = row["train_seconds"] / 60 if row["train_seconds"] else float("nan")
        lines.append(
            f"| {name} | {row['train_steps']} | {minutes:.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--policies",
        nargs="*",
        type=Path,
        default=None,
        help="small-VLA checkpoint dirs (default: models/policies/small-vla-*)",
    )
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--episodes", type=int, default=20, help="seeded layouts per family")
    parser.add_argument("--seed-start", type=int, default=10000)
    parser.add_argument(
        "--steps", type=int, default=None, help="episode length (default: the family's)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from policies.small_vla import SmallVLAPolicy
    from wm_env.sim.tasks import get_family

    families = [get_family(f.strip()).name for f in args.families.split(",") if f.strip()]
    paths = args.policies or sorted(Path("models/policies").glob("small-vla-*"))
    if not paths:
        raise SystemExit("no policies given and none found under models/policies/small-vla-*")
    loaded = [SmallVLAPolicy.from_pretrained(p) for p in paths]
    loaded.sort(key=lambda p: p.info.get("steps", 0))
    figures: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
        "episodes": args.episodes,
        "seed_start": args.seed_start,
        "families": families,
        "policies": {},
    }
    for policy in loaded:
        print(f"{policy.name}:", flush=True)
        started = time.perf_counter()
        success = evaluate(policy, families, args.episodes, args.seed_start, args.steps)
        k = sum(s["successes"] for s in success.values())
        n = sum(s["episodes"] for s in success.values())
        figures["policies"][policy.name] = {
            "train_steps": policy.info.get("steps"),
            "train_seconds": policy.info.get("train_seconds"),
            "success": success,
            "overall": {
                "successes": k,
                "episodes": n,
                "rate": k / n,
                "wilson": list(wilson_interval(k, n)),
            },
            "eval_seconds": round(time.perf_counter() - started, 1),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policy_figures.json").write_text(json.dumps(figures, indent=2))
    text = markdown(figures)
    (args.out / "policy_figures.md").write_text(text)
    plot(figures, args.out / "policy_figures.png")
    print(text)


if __name__ == "__main__":
    main()
