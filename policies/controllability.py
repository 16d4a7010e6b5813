"""``wmgym eval controllability``: can the world model's action input be read back by planning?

For pairs of consecutive real frames ``(x_t, x_{t+1})`` of held-out episodes (the training
split's validation episodes), CEM searches the action ``a`` that makes the model's next frame
from the true history ending at ``x_t`` closest to the real next latent ``encode(x_{t+1})``; the
recovered action is compared with the recorded one, per action dimension. A model that ignores
its action input scores no better than the zero-action baseline.

Settings follow the semantic-world-model paper (RECIPE.md, "Evaluation"): 256 samples, 25
elites, 5 iterations, std 1, one step. Two deliberate differences:

- the search starts from zero (``init="zero"``), not from the true action as the paper does
  (that leaks the answer; ``init="true"`` reproduces it, ``init="mean"`` starts at the data mean);
- bounds are ``[-1, 1]`` in env units, the action space the model was trained on. The paper's
  ``[-2, 2]`` are in its normalised units; our bundles normalise the six motion dims by q01/q99
  to [-1, 1] (for ``data/sim64`` q01/q99 are -1/1, so env and normalised units coincide), so
  ``[-1, 1]`` env units is the matching box. ``--cem.bounds -2 2`` is allowed but samples
  actions the model never saw.

Writes ``controllability.csv`` (one row per pair: true, recovered, model costs),
``controllability.json`` (summary) and ``controllability.md`` to ``--out``.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from policies.cem import CEMConfig, plan_in_world_model, rollout_costs
from wm_env.dataset.split import DataConfig, split_episodes
from wm_env.errors import lookup
from wm_env.options import WorldModelOptions
from wm_env.spaces import ACTION_DIM

DIMS = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
INITS = ("zero", "mean", "true")


def paper_cem() -> CEMConfig:
    """The paper's controllability CEM (one step), with env-unit bounds [-1, 1]."""
    return CEMConfig(
        samples=256, elites=25, iterations=5, horizon=1, std=1.0, bounds=(-1.0, 1.0), cost="l2"
    )


@dataclass(frozen=True)
class ControllabilityConfig:
    """Recover actions between consecutive held-out frames by CEM in the world model.

    Attributes:
        bundle: the model bundle directory.
        out: where controllability.csv / .json / .md go.
        pairs: frame pairs drawn (seeded) from the held-out episodes.
        cem: the planner (``horizon`` must be 1); ``cem.cost`` is the latent distance.
        init: where the search starts: ``zero`` (honest), ``mean`` (data mean action), or
            ``true`` (the paper's: the recorded action; leaks the answer).
        pairs_per_call: pairs planned together in one batch (``pairs_per_call * cem.samples``
            rollouts per model call).
        wm: how the world model runs (:class:`wm_env.options.WorldModelOptions`; on the
            command line ``--wm.num-steps``, ``--wm.device``).
        seed: seeds the pair draw, the CEM sampling and the model noise.
    """

    bundle: Path = Path("models/default")
    data: DataConfig = field(default_factory=DataConfig)
    out: Path = Path("outputs/controllability")
    pairs: int = 64
    cem: CEMConfig = field(default_factory=paper_cem)
    init: str = "zero"
    pairs_per_call: int = 1
    wm: WorldModelOptions = field(default_factory=WorldModelOptions)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pairs < 1 or self.pairs_per_call < 1:
            raise ValueError(
                f"pairs and pairs_per_call must be >= 1; got {self.pairs}, {self.pairs_per_call}"
            )
        if self.cem.horizon != 1:
            raise ValueError(
                f"controllability recovers one action: cem.horizon must be 1; got {self.cem.horizon}"
            )
        lookup("init", self.init, {i: i for i in INITS})


def held_out_pairs(dataset, data: DataConfig, pairs: int, seed: int) -> list[tuple[int, int]]:
    """``pairs`` (episode, t) with a valid action from ``x_t`` to ``x_{t+1}``, drawn without
    replacement from the validation episodes of ``data``'s split (sorted)."""
    _, val_ids = split_episodes(dataset.num_episodes, data.val_fraction, data.split_seed)
    candidates = []
    for i in val_ids:
        episode = int(dataset.episode_ids[i])
        valid = dataset.action_valid(episode)[:-1]  # the last row has no next frame
        candidates += [(episode, int(t)) for t in np.flatnonzero(valid)]
    if not candidates:
        raise ValueError(f"{dataset.root}: the held-out episodes hold no frame pairs")
    if pairs > len(candidates):
        raise ValueError(
            f"asked for {pairs} pairs but the held-out episodes hold {len(candidates)}"
        )
    chosen = np.random.default_rng(seed).choice(len(candidates), pairs, replace=False)
    return sorted(candidates[i] for i in chosen)


def _errors(pred: np.ndarray, true: np.ndarray) -> dict:
    """Per-dimension mean absolute and root mean square errors, and the mean 7-D L2 norm."""
    err = pred - true  # (N, 7)
    return {
        "abs_per_dim": dict(zip(DIMS, np.abs(err).mean(0).round(4).tolist(), strict=True)),
        "rmse_per_dim": dict(zip(DIMS, np.sqrt((err**2).mean(0)).round(4).tolist(), strict=True)),
        "mean_abs": round(float(np.abs(err).mean()), 4),
        "mean_l2_norm": round(float(np.linalg.norm(err, axis=1).mean()), 4),
    }


def _correlation(pred: np.ndarray, true: np.ndarray) -> dict:
    out = {}
    for d, name in enumerate(DIMS):
        p, t = pred[:, d], true[:, d]
        ok = p.std() > 1e-8 and t.std() > 1e-8
        out[name] = round(float(np.corrcoef(p, t)[0, 1]), 4) if ok else None
    return out


def evaluate_controllability(config: ControllabilityConfig, progress: bool = True) -> dict:
    """Run the evaluation; write and return the summary."""
    from tqdm.auto import tqdm

    from wm_env.dataset.lerobot import LeRobotDataset
    from wm_env.world_model import WorldModel

    model = WorldModel.from_pretrained(config.bundle, config.wm)
    dataset = LeRobotDataset(config.data.dataset)
    pairs = held_out_pairs(dataset, config.data, config.pairs, config.seed)
    frames = {e: dataset.frames(e, config.data.camera) for e in sorted({e for e, _ in pairs})}
    actions = {e: dataset.actions(e) for e in frames}
    history = model.history
    histories = np.stack(
        [frames[e][np.clip(np.arange(t - history + 1, t + 1), 0, None)] for e, t in pairs]
    )  # (N, history, H, W, 3)
    targets = np.stack([frames[e][t + 1] for e, t in pairs])  # (N, H, W, 3)
    true = np.stack([actions[e][t] for e, t in pairs]).astype(np.float32)  # (N, 7)
    data_mean = np.asarray(model.action_stats["mean"][:ACTION_DIM], np.float32)
    init = {
        "zero": np.zeros_like(true),
        "mean": np.broadcast_to(data_mean, true.shape),
        "true": true,
    }[config.init]

    rng = np.random.default_rng(config.seed)
    recovered, costs = [], []  # (N, 7); (N, 3) model costs of recovered / true / zero
    start = time.perf_counter()
    chunks = range(0, len(pairs), config.pairs_per_call)
    for first in tqdm(chunks, desc="controllability", disable=not progress):
        rows = slice(first, first + config.pairs_per_call)
        model.reset(histories[rows], seed=config.seed + first)
        goal = model.encode(targets[rows])  # (P, L, D)
        best, _ = plan_in_world_model(model, goal, config.cem, rng, init[rows][:, None])
        candidates = np.stack(
            [best[:, 0], true[rows], np.zeros_like(true[rows])], axis=1
        )  # (P, 3, 7)
        # the same start (and noise) as the planner saw, so the costs are comparable
        costs.append(
            rollout_costs(model, model.snapshot(), goal, candidates[:, :, None], config.cem.cost)
        )
        recovered.append(best[:, 0])
    seconds = time.perf_counter() - start
    recovered, costs = np.concatenate(recovered), np.concatenate(costs)

    summary = {
        "bundle": str(config.bundle),
        "dataset": str(config.data.dataset),
        "pairs": len(pairs),
        "episodes": len(frames),
        "init": config.init,
        "cem": asdict(config.cem),
        "num_steps": model.num_steps,
        "temperature": model.temperature,
        "seconds": round(seconds, 1),
        "cem_recovered": _errors(recovered, true),
        "zero_action": _errors(np.zeros_like(true), true),
        "data_mean_action": _errors(np.broadcast_to(data_mean, true.shape), true),
        "correlation_per_dim": _correlation(recovered, true),
        "model_cost": {
            "recovered": round(float(costs[:, 0].mean()), 4),
            "true_action": round(float(costs[:, 1].mean()), 4),
            "zero_action": round(float(costs[:, 2].mean()), 4),
            "true_beats_zero": round(float((costs[:, 1] < costs[:, 2]).mean()), 4),
            "recovered_beats_true": round(float((costs[:, 0] < costs[:, 1]).mean()), 4),
        },
    }
    config.out.mkdir(parents=True, exist_ok=True)
    with open(config.out / "controllability.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["episode", "t"]
            + [f"true_{d}" for d in DIMS]
            + [f"recovered_{d}" for d in DIMS]
            + ["cost_recovered", "cost_true", "cost_zero"]
        )
        for (e, t), a, r, c in zip(pairs, true, recovered, costs, strict=True):
            writer.writerow(
                [e, t, *np.round(a, 5).tolist(), *np.round(r, 5).tolist(), *np.round(c, 5).tolist()]
            )
    (config.out / "controllability.json").write_text(json.dumps(summary, indent=2))
    (config.out / "controllability.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict) -> str:
    """The summary as a Markdown table (mean absolute error per action dimension)."""
    c = summary["cem"]
    rows = [
        ("CEM recovered", summary["cem_recovered"]),
        ("zero action", summary["zero_action"]),
        ("data-mean action", summary["data_mean_action"]),
    ]
    lines = [
        f"Controllability of {summary['bundle']} on {summary['pairs']} held-out frame pairs "
        f"({summary['episodes']} episodes of {summary['dataset']}): CEM {c['samples']} samples, "
        f"{c['elites']} elites, {c['iterations']} iterations, std {c['std']:g}, bounds "
        f"[{c['bounds'][0]:g}, {c['bounds'][1]:g}] (env units), {c['cost']} latent cost, "
        f"starting from {summary['init']}; {summary['num_steps']} denoising steps, "
        f"temperature {summary['temperature']:g}; {summary['seconds']:.0f} s.",
        "",
        "Mean absolute error per action dimension (actions in [-1, 1]):",
        "",
        "| | " + " | ".join(DIMS) + " | all | mean L2 (7-D) |",
        "|---" * (len(DIMS) + 3) + "|",
    ]
    for name, e in rows:
        per_dim = " | ".join(f"{e['abs_per_dim'][d]:.3f}" for d in DIMS)
        lines.append(f"| {name} | {per_dim} | {e['mean_abs']:.3f} | {e['mean_l2_norm']:.3f} |")
    corr = summary["correlation_per_dim"]
    lines.append(
        "| correlation (recovered, true) | "
        + " | ".join("n/a" if corr[d] is None else f"{corr[d]:.2f}" for d in DIMS)
        + " | | |"
    )
    m = summary["model_cost"]
    lines += [
        "",
        f"Model cost ({c['cost']} distance to the real next latent): recovered {m['recovered']:.4f}, "
        f"true action {m['true_action']:.4f}, zero action {m['zero_action']:.4f}. The true action "
        f"beats the zero action in {100 * m['true_beats_zero']:.0f}% of pairs; the recovered action "
        f"beats the true one in {100 * m['recovered_beats_true']:.0f}%.",
    ]
    return "\n".join(lines) + "\n"
