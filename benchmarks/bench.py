"""``wmgym bench leaderboard``: run a suite, aggregate the CSV leaderboards, write the report."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.episode_log import EpisodeLog
from benchmarks.leaderboard import write_leaderboards
from benchmarks.report import write_report
from benchmarks.runner import LOG_NAME, RUN_NAME, RunOptions, run_suite
from benchmarks.suite import Suite, load_suite

DEFAULT_SUITE = Path(__file__).parent / "suites" / "default.yaml"


@dataclass
class LeaderboardConfig:
    """Run a benchmark suite and write ``leaderboard.csv``, ``leaderboard_long.csv`` and a report.

    Re-running the same command resumes: only episodes missing from ``<out>/episodes.jsonl``
    are run.

    Examples::

        wmgym bench leaderboard                                   # the default suite
        wmgym bench leaderboard --suite my_suite.yaml --out runs/lb --workers 2
        wmgym bench leaderboard --suite my_suite.toml --ray-address auto
        wmgym bench leaderboard --world sim --out runs/lb_sim     # the same suite in the sim
    """

    suite: Path = DEFAULT_SUITE
    """the suite file (YAML or TOML)."""
    out: Path = Path("outputs/leaderboard")
    """the run directory: episodes.jsonl, CSVs, report, sampled videos."""
    world: str | None = None
    """override the suite's world: ``sim`` or ``world_model``."""
    bundle: Path | None = None
    """override the world-model bundle."""
    num_envs: int | None = None
    """override the world model's batch (episodes per model call)."""
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
    seeds: tuple[int, ...] | None = None
    """override the suite's start seeds (more seeds on a finished run's --out run only the new starts)."""
    conditions: tuple[str, ...] | None = None
    """run only these of the suite's conditions, by name (e.g. ``clean``)."""
    calibration: Path | None = None
    """the judge's calibration (``wmgym judge calibrate --save``) that corrects the success
    rates; default: the ``calibration.json`` in the judge's directory. One measured for another
    judge or world model is refused."""
    workers: int = 1
    """local worker processes (1: in this process)."""
    ray_address: str | None = None
    """run chunks as Ray tasks: ``local`` (start Ray here), ``auto`` or a cluster address."""
    retry_errors: bool = False
    """re-run episodes whose row records an error (a server that was down)."""
    threads: int | None = None
    """torch threads per process (default: the machine's cores shared among the processes)."""


def configured_suite(config: LeaderboardConfig) -> Suite:
    """The suite file with the command line's overrides applied."""
    suite = load_suite(config.suite, {"seeds": list(config.seeds)} if config.seeds else None)
    overrides = {"type": config.world, "bundle": config.bundle and str(config.bundle),
                 "num_envs": config.num_envs, "dtype": config.dtype,
                 "num_steps": config.num_steps, "decoder": config.decoder}  # fmt: skip
    given = {k: v for k, v in overrides.items() if v is not None}
    suite = suite.with_world(dataclasses.replace(suite.world, **given))
    if config.conditions:
        chosen = tuple(suite.condition(name) for name in dict.fromkeys(config.conditions))
        suite = dataclasses.replace(suite, conditions=chosen)
    judge = suite.judge
    if config.judge_path is not None:
        judge = dataclasses.replace(judge, path=str(config.judge_path))
    if config.judge_inputs is not None:
        judge = dataclasses.replace(judge, options={**judge.options, "inputs": config.judge_inputs})
    return dataclasses.replace(suite, judge=judge)


def editors_of(suite: Suite) -> str:
    """Editor ids and prompts of the suite's distractor conditions (provenance)."""
    parts = []
    for condition in suite.conditions:
        if condition.type == "distractors":
            prompt = f" '{condition.prompt}'" if condition.prompt else ""
            parts.append(f"{condition.name}={condition.editor}x{condition.count}{prompt}")
    return "; ".join(parts)


def run_calibration(config: LeaderboardConfig, suite: Suite, provenance: dict):
    """(calibration, note) for :func:`benchmarks.leaderboard.with_calibrated_success`.

    The sim's oracle is exact. A calibration given with ``--calibration`` must be the judge's on
    this bundle (else :class:`judges.correction.CalibrationMismatch`); the judge directory's own
    calibrations are used when one matches, and the column says why not otherwise.
    """
    from judges.correction import CalibrationMismatch, find_calibration

    if provenance.get("judge") == "oracle":
        return "oracle", "oracle: the sim's predicate, exact"
    judge_sha, bundle_sha = provenance["judge_prompt_sha256"], provenance["bundle_sha256"]
    if config.calibration is not None:
        if not Path(config.calibration).exists():
            raise FileNotFoundError(f"--calibration {config.calibration} does not exist")
        calibration, note = find_calibration(
            config.calibration, judge_sha, bundle_sha, provenance.get("judge")
        )
        if calibration is None:
            raise CalibrationMismatch(
                f"--calibration {config.calibration} does not apply to this run "
                f"(judge {judge_sha[:12]}, bundle {bundle_sha[:12]}): "
                + note.removeprefix("uncalibrated: ")
            )
        return calibration, note
    judge_dir = Path(suite.judge.path) if suite.judge.path else None
    if judge_dir is None or not judge_dir.is_dir():
        return None, "uncalibrated: the judge has no calibration"
    return find_calibration(judge_dir, judge_sha, bundle_sha, provenance.get("judge"))


def run_leaderboard(config: LeaderboardConfig) -> dict[str, Path]:
    """Run (or resume) the suite, then aggregate and report. Returns the written paths."""
    suite = configured_suite(config)
    options = RunOptions(
        workers=config.workers,
        ray_address=config.ray_address,
        retry_errors=config.retry_errors,
        threads=config.threads,
    )
    log: EpisodeLog = run_suite(suite, config.out, options)
    provenance = json.loads((config.out / RUN_NAME).read_text())
    provenance.pop("suite_config", None)
    rows = log.rows_for(suite.episode_keys())  # the log may hold seeds the suite dropped
    calibration, note = run_calibration(config, suite, provenance)
    main, long = write_leaderboards(
        rows, config.out, provenance, editors_of(suite), calibration, note
    )
    report = write_report(config.out, main, long, rows, provenance)
    return {
        "episodes": config.out / LOG_NAME,
        "leaderboard": config.out / "leaderboard.csv",
        "long": config.out / "leaderboard_long.csv",
        "report": report,
        "html": config.out / "report.html",
    }
