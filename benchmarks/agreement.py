"""``wmgym bench agreement``: does the world-model leaderboard rank policies like the truth?

Runs one suite twice, in the ground-truth sim (oracle judge, real distractor objects) and in
the world model (the suite's judge, edited distractors), then reports per policy both success
rates and, across policies, Pearson, Spearman and MMRV (SIMPLER's mean maximum rank
violation) with bootstrap intervals, for clean success and for robustness drop. It also replays
the sim's clean episodes open-loop in the world model (same start, same actions) and judges
them: the share of sim failures judged successes is the judge's hallucinated-success rate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.leaderboard import CLEAN, load_rows
from benchmarks.metrics import wilson_interval
from benchmarks.runner import RUN_NAME, RunOptions, episode_file, plans_in_suite_bundle, run_suite
from benchmarks.suite import EpisodeKey, Suite, WorldSpec
from judges.correction import JudgeCalibration

BOOTSTRAP_SAMPLES = 1000


def mmrv(true: np.ndarray, predicted: np.ndarray) -> float:
    """Mean maximum rank violation (SIMPLER): for each policy, the largest true-success gap to a
    policy the prediction orders the other way; averaged over policies. 0 = same ranking."""
    true, predicted = np.asarray(true, float), np.asarray(predicted, float)
    n = len(true)
    if n < 2:
        return float("nan")
    gaps = np.abs(true[:, None] - true[None, :])
    flipped = (predicted[:, None] < predicted[None, :]) != (true[:, None] < true[None, :])
    return float((gaps * flipped).max(axis=1).mean())


def correlations(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Pearson, Spearman, MMRV and the mean absolute error between per-policy true and
    predicted values (the error is what a reader of one number, "0.5", is told wrong)."""
    from scipy import stats

    true, predicted = np.asarray(true, float), np.asarray(predicted, float)
    constant = np.ptp(true) == 0 or np.ptp(predicted) == 0
    return {
        "pearson": float("nan") if constant else float(stats.pearsonr(true, predicted)[0]),
        "spearman": float("nan") if constant else float(stats.spearmanr(true, predicted)[0]),
        "mmrv": mmrv(true, predicted),
        "mean_abs_error": float(np.mean(np.abs(true - predicted))),
    }


def start_matrices(
    frame: pd.DataFrame, policies: list[str], starts: list[tuple]
) -> tuple[np.ndarray, np.ndarray]:
    """Per policy and start (task, seed, index): clean win and mean perturbed win.

    Returns two float arrays ``(P, S)``, NaN where the episode is missing or has no verdict.
    """
    ok = frame[frame["ok"]]
    column = {start: j for j, start in enumerate(starts)}
    row = {policy: i for i, policy in enumerate(policies)}
    clean = np.full((len(policies), len(starts)), np.nan)
    perturbed_sum = np.zeros_like(clean)
    perturbed_count = np.zeros_like(clean)
    for record in ok.itertuples(index=False):
        j = column.get((record.task, record.seed, record.index))
        i = row.get(record.policy)
        if i is None or j is None:
            continue
        if record.condition == CLEAN:
            clean[i, j] = float(record.win)
        else:
            perturbed_sum[i, j] += float(record.win)
            perturbed_count[i, j] += 1
    with np.errstate(invalid="ignore"):
        perturbed = perturbed_sum / perturbed_count  # NaN where no perturbed episode
    return clean, perturbed


def weighted_rates(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of ``values (P, S)`` over starts with ``weights (B, S)`` ignoring NaN -> ``(B, P)``."""
    present = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.where(present, values, 0.0).T) / (weights @ present.T)


def compare(
    sim_rows, wm_rows, seed: int = 0, calibration: JudgeCalibration | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-policy table, summary table of correlations with bootstrap 95% intervals).

    The bootstrap resamples the shared starts (task, seed, index) with replacement and
    recomputes every policy's success and drop in both worlds from the same resample. With the
    judge's ``calibration`` the table also has the world model's judge-corrected success
    (``wm_success_calibrated`` and its interval) and the summary the quantity
    ``success_calibrated``: the same correction applied to every resample.
    """
    from judges.correction import corrected_point, corrected_rate

    sim, wm = load_rows(sim_rows), load_rows(wm_rows)
    policies = sorted(set(sim["policy"]) & set(wm["policy"]))
    table = []
    for policy in policies:
        entry: dict[str, Any] = {"policy": policy}
        for world, frame in (("sim", sim), ("wm", wm)):
            part = frame[(frame["policy"] == policy) & frame["ok"]]
            clean = part[part["condition"] == CLEAN]
            k, n = int(clean["win"].sum()), len(clean)
            lo, hi = wilson_interval(k, n)
            perturbed = part[part["condition"] != CLEAN]["win"]
            entry.update({
                f"{world}_success": k / n if n else np.nan, f"{world}_success_lo": lo,
                f"{world}_success_hi": hi, f"{world}_episodes": n,
                f"{world}_drop": (k / n - perturbed.mean()) if n and len(perturbed) else np.nan,
            })  # fmt: skip
            if world == "wm" and calibration is not None:
                estimate, lo, hi = corrected_rate(k, n, calibration)
                entry.update({
                    "wm_success_calibrated": estimate, "wm_success_calibrated_lo": lo,
                    "wm_success_calibrated_hi": hi,
                })  # fmt: skip
        table.append(entry)
    table = pd.DataFrame(table)
    starts = sorted(
        set(sim[["task", "seed", "index"]].itertuples(index=False, name=None))
        & set(wm[["task", "seed", "index"]].itertuples(index=False, name=None))
    )
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(starts), size=(BOOTSTRAP_SAMPLES, len(starts)))
    weights = np.stack([np.bincount(d, minlength=len(starts)) for d in draws]).astype(float)
    matrices = {
        world: start_matrices(f, policies, starts) for world, f in (("sim", sim), ("wm", wm))
    }

    def resampled(world: str, quantity: str) -> np.ndarray:  # (B, P)
        clean, perturbed = matrices[world]
        rates = weighted_rates(clean, weights)
        if quantity == "drop":
            return rates - weighted_rates(perturbed, weights)
        if quantity == "success_calibrated" and world == "wm":
            return corrected_point(rates, calibration)
        return rates

    quantities = {"success": "wm_success", "drop": "wm_drop"}
    if calibration is not None:
        quantities["success_calibrated"] = "wm_success_calibrated"
    summary = []
    for quantity, column in quantities.items():
        true = table["sim_drop" if quantity == "drop" else "sim_success"].to_numpy(float)
        predicted = table[column].to_numpy(float)
        if np.isnan(true).any() or np.isnan(predicted).any():
            continue
        point = correlations(true, predicted)
        values = {name: [] for name in point}
        for a, b in zip(resampled("sim", quantity), resampled("wm", quantity), strict=True):
            if np.isnan(a).any() or np.isnan(b).any():
                continue
            for name, value in correlations(a, b).items():
                values[name].append(value)
        for name, value in point.items():
            kept = np.asarray([v for v in values[name] if not np.isnan(v)])
            lo, hi = np.percentile(kept, [2.5, 97.5]) if len(kept) > 10 else (np.nan, np.nan)
            summary.append(
                {"quantity": quantity, "metric": name, "value": value, "lo": lo, "hi": hi}
            )
    return table, pd.DataFrame(summary)


# ------------------------------------------------------------------ judge replays
class ReplayPolicy:
    """Replays a recorded action sequence whatever it observes (open loop)."""

    def __init__(self, name: str, actions: np.ndarray) -> None:
        self.name = name
        self.actions = np.asarray(actions, dtype=np.float32)  # (T, 7)
        self.t = 0

    def reset(self, instruction: str) -> None:
        self.t = 0

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        action = self.actions[min(self.t, len(self.actions) - 1)]
        self.t += 1
        return action


REPLAY_KEY = ("policy", "task", "seed", "index", "judge")
REPLAY_COLUMNS = (*REPLAY_KEY, "sim_success", "wm_success", "wm_score")


def replay_key(row: dict[str, Any]) -> tuple:
    """A replay verdict's identity: its sim episode's (policy, task, seed, index) and judge."""
    return tuple(row[k] for k in REPLAY_KEY)


def replayable(sim_rows) -> list[dict[str, Any]]:
    """The sim episodes that are replayed in the world model: clean, run and judged."""
    return [
        r
        for r in sim_rows
        if r["condition"] == CLEAN and r["error"] is None and r["success"] is not None
    ]


def replay_judges(suite: Suite, extra: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """``[(judge id, judge)]``: the suite's judge, then each of ``extra`` (judge locations:
    a probe or read-out directory, a VLM checkpoint, a URL)."""
    from benchmarks.runner import build_judge, judge_identity
    from judges.registry import load_judge

    judges = [build_judge(suite), *(load_judge(str(location)) for location in extra)]
    named = [(judge_identity(suite, judge)[0], judge) for judge in judges]
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"replay judges must be distinct; got {names}")
    return named


def judge_replays(
    suite: Suite,
    sim_dir: Path,
    episodes: list[dict[str, Any]],
    out_dir: Path,
    judges: list[tuple[str, Any]] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Replay each sim episode's actions (rows of :func:`replayable`) in the world model from
    the same start and judge the generated video with each of ``judges`` (default: the suite's
    judge); yields each batch's rows (``REPLAY_COLUMNS``, one per episode and judge) as soon
    as it is judged. An episode row may carry ``"judges"``: the ids of the judges it still
    needs (default: all)."""
    from benchmarks.worlds import WorldModelWorld, render_starts

    judges = judges if judges is not None else replay_judges(suite)
    clean_suite = replace(suite, conditions=suite.conditions[:1])
    starts = render_starts(suite.tasks, suite.seeds, suite.world.resolution, out_dir / "starts")
    world = WorldModelWorld(clean_suite, starts)
    try:
        for i in range(0, len(episodes), world.batch_size):
            batch = episodes[i : i + world.batch_size]
            keys = [EpisodeKey(r["policy"], r["task"], CLEAN, r["seed"], r["index"]) for r in batch]
            policies = []
            for key in keys:
                with np.load(episode_file(sim_dir, key)) as data:
                    policies.append(ReplayPolicy(key.policy, data["actions"]))
            rows = []
            for row, result in zip(batch, world.run(keys, policies), strict=True):
                wanted = row.get("judges")
                for judge_id, judge in judges:
                    if wanted is not None and judge_id not in wanted:
                        continue
                    verdict = judge.judge(result.frames, result.instruction)
                    rows.append({
                        "policy": row["policy"], "task": row["task"], "seed": row["seed"],
                        "index": row["index"], "sim_success": bool(row["success"]),
                        "wm_success": verdict.success, "wm_score": verdict.score,
                        "judge": judge_id,
                    })  # fmt: skip
            yield rows
    finally:
        world.close()


def update_replays(
    suite: Suite,
    sim_dir: Path,
    sim_rows,
    path: Path,
    judges: list[tuple[str, Any]] | None = None,
) -> pd.DataFrame:
    """:func:`judge_replays` of the clean sim episodes in ``sim_rows`` by each of ``judges``
    (default: the suite's), reusing the verdicts already in ``path``: a resumed or extended run
    replays only the episodes some judge has not judged yet, and asks only those judges.
    ``path`` is rewritten (atomically) after every judged batch, so an interrupted run keeps
    the batches it finished. Returns the verdicts on ``sim_rows``' episodes, in order (one row
    per episode and judge)."""
    judges = judges if judges is not None else replay_judges(suite)
    judge_ids = [judge_id for judge_id, _ in judges]
    episodes = replayable(sim_rows)
    keys = [replay_key({**r, "judge": j}) for r in episodes for j in judge_ids]
    wanted = set(keys)
    done: dict[tuple, dict] = {}
    if path.exists():
        cached = pd.read_csv(path, dtype={"policy": str, "task": str, "judge": str})
        done = {replay_key(r): r for r in cached.to_dict("records")}

    def write(only_these: bool) -> pd.DataFrame:
        # while replays are still running, keep the cached rows of other episodes too
        order = keys if only_these else keys + [k for k in done if k not in wanted]
        table = pd.DataFrame([done[k] for k in order if k in done], columns=list(REPLAY_COLUMNS))
        temporary = path.with_suffix(".tmp")
        table.to_csv(temporary, index=False)
        os.replace(temporary, path)
        return table

    todo = []
    for r in episodes:
        missing = [j for j in judge_ids if replay_key({**r, "judge": j}) not in done]
        if missing:
            todo.append({**r, "judges": missing})
    if todo:
        for batch in judge_replays(suite, sim_dir, todo, path.parent, judges):
            done.update({replay_key(row): row for row in batch})
            write(only_these=False)
    return write(only_these=True)


def replay_rates(part: pd.DataFrame) -> dict[str, Any]:
    """Hallucinated success (sim failures judged successes) and missed success, with Wilson,
    of one judge's verdicts ``part`` (columns ``sim_success``, ``wm_success``)."""
    summary: dict[str, Any] = {}
    for name, truth, verdict in (
        ("hallucinated_success", False, True),
        ("missed_success", True, False),
    ):
        decided = part[(part["sim_success"] == truth) & part["wm_success"].notna()]
        k, n = int((decided["wm_success"] == verdict).sum()), len(decided)
        lo, hi = wilson_interval(k, n)
        summary[name] = {"rate": k / n if n else float("nan"), "lo": lo, "hi": hi, "episodes": n}
    return summary


def replay_summary(replays: pd.DataFrame) -> dict[str, Any]:
    """:func:`replay_rates` of the first judge in ``replays`` (the suite's), and under
    ``"judges"`` of every judge and, with several, of ``all(...)``: success only when every
    judge that decided says so (the conservative ensemble)."""
    if "judge" not in replays or replays.empty:
        return replay_rates(replays)
    names = list(dict.fromkeys(replays["judge"]))
    per_judge = {name: replay_rates(replays[replays["judge"] == name]) for name in names}
    if len(names) > 1:
        episode = ["policy", "task", "seed", "index"]
        wide = replays.set_index([*episode, "judge"])["wm_success"].unstack("judge")
        truth = replays.groupby(episode)["sim_success"].first()
        decided = wide.notna().any(axis=1)
        both = (~wide.eq(False).any(axis=1)).where(decided)  # no judge said no
        combined = pd.DataFrame({"sim_success": truth, "wm_success": both})
        per_judge[f"all({','.join(names)})"] = replay_rates(combined)
    return {**per_judge[names[0]], "judges": per_judge}


# ------------------------------------------------------------------ the command
@dataclass
class AgreementConfig:
    """Run a suite in the sim and in the world model and compare the two leaderboards.

    Examples::

        wmgym bench agreement --split heldout        # the published figure: held-out suite
        wmgym bench agreement                        # development: the suite the bundle was tuned on
        wmgym bench agreement --suite my_suite.yaml --out runs/agreement --seeds 0 1 2 3 4 5
    """

    split: str = "development"
    """which default suite: "heldout" (policies and start seeds no model, probe or threshold was
    fitted or tuned on: the figure to publish) or "development" (the default leaderboard suite
    plus the CEM agent). A held-out suite is checked against the development suites first."""
    suite: Path | None = None
    """a suite file instead of the split's (its world is used for the world-model side)."""
    out: Path | None = None
    """run directory (default outputs/agreement, or outputs/agreement_heldout): sim/ and wm/
    hold each world's resumable episode log."""
    seeds: tuple[int, ...] | None = None
    """override the suite's start seeds (more seeds on a finished run's --out run only the new starts)."""
    conditions: tuple[str, ...] | None = None
    """run only these of the suite's conditions, by name (e.g. ``clean``)."""
    bundle: Path | None = None
    """override the world-model bundle."""
    dtype: str | None = None
    """override the world model's autocast dtype: fp32, bf16 or fp16."""
    num_steps: int | None = None
    """override the world model's denoising steps per frame."""
    decoder: str | None = None
    """override the world model's decoder: one of the bundle's (e.g. "light"), or "encoder"."""
    judge_path: str | None = None
    """override the judge's location: a probe directory, a VLM checkpoint or a server URL."""
    judge_inputs: str | None = None
    """probe judge only: "latents" judges the world model's own latents (no decoding)."""
    replays: bool = True
    """judge world-model replays of the sim's clean episodes (the judge's hallucinated and
    missed success); ``--no-replays`` skips them."""
    replay_judge: tuple[str, ...] = ()
    """more judges (probe or read-out directories, VLM checkpoints, URLs) that also judge the
    world-model replays of the sim's clean episodes, beside the suite's judge: their
    hallucinated and missed success, and that of all of them together, go in agreement.json."""
    calibration: Path | None = None
    """the judge's calibration (``wmgym judge calibrate --save``) behind the judge-corrected
    success; default: the one in the judge's directory measured on this bundle, if any."""
    workers: int = 1
    """local worker processes for the sim side."""
    threads: int | None = None
    """torch threads per process (default: the machine's cores shared among the processes)."""


SUITES_DIR = Path(__file__).parent / "suites"
SPLIT_SUITES = {
    "development": SUITES_DIR / "agreement.yaml",
    "heldout": SUITES_DIR / "heldout.yaml",
}
DEVELOPMENT_SUITES = (SUITES_DIR / "default.yaml", SUITES_DIR / "agreement.yaml")


def split_suite(config: AgreementConfig) -> tuple[Path, Path]:
    """(suite file, run directory) of ``config``: its own, or its split's defaults."""
    from wm_env.errors import lookup

    default = lookup("split", config.split, SPLIT_SUITES)
    suite = config.suite or default
    out = config.out or Path(
        "outputs/agreement"
        if config.split == "development"
        else f"outputs/agreement_{config.split}"
    )
    return Path(suite), Path(out)


def check_split(suite: Suite, split: str) -> None:
    """A suite must be of the split asked for; a held-out one must share no start seed or
    policy with the development suites (:meth:`Suite.check_heldout`).

    Raises:
        ValueError: the suite's split is another, or it is not held out from development.
    """
    from benchmarks.suite import load_suite

    if suite.split != split:
        raise ValueError(
            f"suite {suite.name!r} is split {suite.split!r}, but --split {split} was asked for "
            f"(set 'split: {split}' in the suite file if that is what it is)"
        )
    if split == "heldout":
        suite.check_heldout([load_suite(path) for path in DEVELOPMENT_SUITES])


def run_agreement(config: AgreementConfig) -> dict[str, Path]:
    from benchmarks.bench import LeaderboardConfig, configured_suite, run_calibration

    suite_path, out = split_suite(config)
    leaderboard_config = LeaderboardConfig(
        suite=suite_path,
        seeds=config.seeds,
        conditions=config.conditions,
        bundle=config.bundle,
        dtype=config.dtype,
        num_steps=config.num_steps,
        decoder=config.decoder,
        judge_path=config.judge_path,
        judge_inputs=config.judge_inputs,
        calibration=config.calibration,
    )
    suite = configured_suite(leaderboard_config)
    check_split(suite, config.split)
    if suite.world.type != "world_model":
        suite = suite.with_world(replace(suite.world, type="world_model"))
    # the sim keeps the bundle only where a planning policy (CEM) plans with it in both
    # worlds; otherwise the sim's episodes do not depend on it and serve every bundle's run
    planned = any(map(plans_in_suite_bundle, suite.policies))
    sim_suite = suite.with_world(
        WorldSpec(
            type="sim", bundle=suite.world.bundle if planned else None,
            resolution=suite.world.resolution,
        )
    )  # fmt: skip
    sim_log = run_suite(
        sim_suite, out / "sim", RunOptions(workers=config.workers, threads=config.threads)
    )
    wm_log = run_suite(suite, out / "wm", RunOptions(threads=config.threads))
    # a run directory can hold seeds the suite no longer has (seeds can change between runs)
    sim_rows = sim_log.rows_for(sim_suite.episode_keys())
    provenance = json.loads((out / "wm" / RUN_NAME).read_text())
    calibration, calibration_note = run_calibration(leaderboard_config, suite, provenance)
    if not isinstance(calibration, JudgeCalibration):  # an oracle judge needs no correction
        calibration = None
    table, summary = compare(
        sim_rows, wm_log.rows_for(suite.episode_keys()), seed=suite.seed, calibration=calibration
    )
    replay_stats: dict[str, Any] = {}
    if config.replays:
        judges = replay_judges(suite, config.replay_judge)
        replays = update_replays(suite, out / "sim", sim_rows, out / "replays.csv", judges)
        replay_stats = replay_summary(replays)
    table.to_csv(out / "agreement.csv", index=False, float_format="%.4f")
    summary.to_csv(out / "agreement_summary.csv", index=False, float_format="%.4f")
    (out / "agreement.json").write_text(
        json.dumps(
            {
                "split": suite.split,
                "suite": suite.name,
                "calibration": calibration_note,
                "summary": summary.to_dict("records"),
                "replays": replay_stats,
            },
            indent=1,
        )  # fmt: skip
    )
    plot = scatter_plot(table, out / "agreement.png")
    write_report(out)
    return {
        "report": out / "agreement.md",
        "per_policy": out / "agreement.csv",
        "summary": out / "agreement_summary.csv",
        "replays": out / "replays.csv",
        "json": out / "agreement.json",
        "plot": plot,
    }


def label_offsets(
    points: list[tuple[float, float]], near: float = 0.08, step: float = 9.0
) -> list[tuple[float, float]]:
    """Offsets (points) of each point's label: a label near earlier points' labels is moved
    ``step`` points up per such neighbour, so policies with about the same success stay legible."""
    offsets = []
    for i, (x, y) in enumerate(points):
        crowd = sum(abs(x - u) < near and abs(y - v) < near for u, v in points[:i])
        offsets.append((4.0, 4.0 + step * crowd))
    return offsets


def scatter_plot(table: pd.DataFrame, path: Path) -> Path:
    """World-model success vs sim success, one point per policy, with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.2, 4.0))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    points = list(zip(table["sim_success"], table["wm_success"], strict=True))
    for (_, row), offset in zip(table.iterrows(), label_offsets(points), strict=True):
        x, y = row["sim_success"], row["wm_success"]
        axis.errorbar(
            x, y,
            xerr=[[x - row["sim_success_lo"]], [row["sim_success_hi"] - x]],
            yerr=[[y - row["wm_success_lo"]], [row["wm_success_hi"] - y]],
            fmt="o", capsize=2,
        )  # fmt: skip
        axis.annotate(row["policy"], (x, y), textcoords="offset points", xytext=offset, fontsize=7)
        if "wm_success_calibrated" in table and not np.isnan(row["wm_success_calibrated"]):
            calibrated = row["wm_success_calibrated"]
            axis.plot([x, x], [y, calibrated], color="grey", linewidth=0.6)
            axis.plot(x, calibrated, "o", markerfacecolor="none", color="grey")
    axis.set_xlim(-0.03, 1.03)
    axis.set_ylim(-0.03, 1.03)
    axis.set_xlabel("success in the sim (truth)")
    axis.set_ylabel("success in the world model")
    if "wm_success_calibrated" in table:
        axis.set_title("open circles: judge-corrected", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ------------------------------------------------------------------ report
def _interval(value: float, lo: float, hi: float) -> str:
    if np.isnan(value):
        return "n/a"
    return f"{value:.2f} [{lo:.2f}, {hi:.2f}]" if not np.isnan(lo) else f"{value:.2f}"


def write_report(out: Path) -> Path:
    """``<out>/agreement.md`` from a finished run's ``agreement.csv``, ``agreement_summary.csv``
    and ``agreement.json``: per-policy success in both worlds, the summary, the replay judges."""
    out = Path(out)
    table = pd.read_csv(out / "agreement.csv")
    summary = pd.read_csv(out / "agreement_summary.csv")
    meta = json.loads((out / "agreement.json").read_text())
    calibrated = "wm_success_calibrated" in table
    lines = [
        f"# Agreement with the sim: suite `{meta.get('suite', '?')}`, split "
        f"**{meta.get('split', 'development')}**",
        "",
        f"Calibration: {meta.get('calibration', 'n/a')}.",
        "",
        "| policy | sim success | world-model success | "
        + ("judge-corrected | " if calibrated else "")
        + "sim drop | world-model drop |",
        "|---|---|---|" + ("---|" if calibrated else "") + "---|---|",
    ]
    for row in table.sort_values("sim_success", ascending=False).itertuples(index=False):
        cells = [
            row.policy,
            _interval(row.sim_success, row.sim_success_lo, row.sim_success_hi),
            _interval(row.wm_success, row.wm_success_lo, row.wm_success_hi),
        ]
        if calibrated:
            cells.append(
                _interval(
                    row.wm_success_calibrated,
                    row.wm_success_calibrated_lo,
                    row.wm_success_calibrated_hi,
                )  # fmt: skip
            )
        cells += ["n/a" if np.isnan(d) else f"{d:+.2f}" for d in (row.sim_drop, row.wm_drop)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| quantity | Pearson | Spearman | MMRV | mean abs error |",
        "|---|---|---|---|---|",
    ]
    for quantity, part in summary.groupby("quantity", sort=False):
        by = part.set_index("metric")
        cells = [
            _interval(by.loc[m, "value"], by.loc[m, "lo"], by.loc[m, "hi"]) if m in by.index
            else "n/a"
            for m in ("pearson", "spearman", "mmrv", "mean_abs_error")
        ]  # fmt: skip
        lines.append(f"| {quantity} | " + " | ".join(cells) + " |")
    judges = meta.get("replays", {}).get("judges") or (
        {"suite judge": meta["replays"]} if meta.get("replays") else {}
    )
    if judges:
        lines += [
            "",
            "World-model replays of the sim's clean episodes (same start, same actions):",
            "",
            "| judge | hallucinated success (sim failures judged successes) | missed success |",
            "|---|---|---|",
        ]
        for name, stats in judges.items():
            cells = [
                f"{s['rate']:.3f} [{s['lo']:.2f}, {s['hi']:.2f}] of {s['episodes']}"
                for s in (stats["hallucinated_success"], stats["missed_success"])
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    path = out / "agreement.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":  # python -m benchmarks.agreement RUN_DIR: rewrite its agreement.md
    import sys

    print(write_report(Path(sys.argv[1])))
