"""Run a suite: every missing episode, judged, appended to the JSONL log as it ends.

``run_suite(suite, out_dir)`` renders the starts (cached), splits the missing episodes into
chunks, runs each chunk in the suite's world (the world model in batches of ``num_envs``
through the vector env; the sim one episode at a time), judges it, saves sampled videos and
every episode's actions, and appends one row per episode to ``out_dir/episodes.jsonl``.
Chunks run in this process, in local worker processes (``workers > 1``), or as Ray tasks
(``ray_address``). Re-running resumes: only episodes without a row are run. The same suite
with more (or other) seeds may go on in the same directory: only the new starts' episodes run.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.episode_log import EpisodeLog
from benchmarks.suite import EpisodeKey, PolicySpec, Suite, suite_from_dict
from benchmarks.worlds import (
    NOISE_SALT,
    POLICY_SALT,
    EpisodeResult,
    SimWorld,
    WorldModelWorld,
    episode_seed,
    render_starts,
)
from wm_env.bundle import run_config_sha256

LOG_NAME = "episodes.jsonl"
RUN_NAME = "run.json"
VIDEOS_PER_CELL = 2  # episodes per (policy, task, condition) whose frames are kept for GIFs


@dataclass(frozen=True)
class RunOptions:
    """How to run a suite (not part of its identity: changing these never invalidates a log)."""

    workers: int = 1  # local processes (1: run in this process)
    ray_address: str | None = None  # "auto", "local" or a cluster address: run chunks on Ray
    retry_errors: bool = False  # also re-run episodes whose row is an error
    progress: bool = True
    threads: int | None = None  # torch threads per process (None: cores / local processes)

    @property
    def torch_threads(self) -> int:
        """``threads``, or the machine's cores shared among the local processes."""
        if self.threads:
            return self.threads
        return max(1, (os.cpu_count() or 1) // max(self.workers, 1))


# ------------------------------------------------------------------ provenance
def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def provenance(suite: Suite, judge_id: str, prompt_hash: str) -> dict[str, Any]:
    """What the leaderboard's provenance columns hold."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version("wm-gym")
    except PackageNotFoundError:
        package_version = ""
    return {
        "suite": suite.name,
        "suite_sha256": suite.hash(),
        "world": suite.world.type,
        "bundle_sha256": bundle_fingerprint(suite),
        "judge": judge_id,
        "judge_prompt_sha256": prompt_hash,
        "seeds": " ".join(str(s) for s in suite.seeds),
        "version": package_version,
        "git_revision": git_revision(),
    }


def plans_in_suite_bundle(spec: PolicySpec) -> bool:
    """Whether the policy plans in the suite's world model (the CEM agent without its own ``model``)."""
    return spec.spec == "cem" and "model" not in spec.options


def results_bundle(suite: Suite) -> str | None:
    """The world-model bundle the suite's results depend on, or None.

    In a world-model world, its bundle; in the sim, the same bundle when a policy plans in it
    (the CEM agent without its own ``model`` option plans with the suite's bundle).
    """
    if suite.world.type == "world_model":
        return suite.world.bundle
    return suite.world.bundle if any(map(plans_in_suite_bundle, suite.policies)) else None


def bundle_fingerprint(suite: Suite) -> str:
    """sha256 of :func:`results_bundle`'s ``config.json`` (it lists every weight file's sha256),
    without the named decoders the run does not render with (:func:`run_config_sha256`)."""
    bundle = results_bundle(suite)
    if not bundle:
        return ""
    world = suite.world
    return run_config_sha256(bundle, world.decoder if world.type == "world_model" else None)


REFUSE_RESUME = "use another --out directory, or delete it to start over"


def recorded_run(out_dir: Path) -> dict[str, Any]:
    """The provenance record of the run already in ``out_dir`` (empty when there is none)."""
    run_file = out_dir / RUN_NAME
    return json.loads(run_file.read_text()) if run_file.exists() else {}


def continues(recorded: dict[str, Any], suite: Suite) -> bool:
    """Whether ``suite`` may go on with a recorded run of another suite hash.

    It may when the two differ only in what does not change the episodes already logged: the
    start seeds (every row is keyed by its seed and episode index, which do not change when
    seeds are added, so more seeds only add episodes), which conditions and policies run (rows
    are keyed by their names; a condition or policy both suites name must be the same), and in
    the sim the judge (the sim's oracle decides there; the suite's judge is the world model's).
    """
    config = recorded.get("suite_config")
    if not config:
        return False
    try:
        before = suite_from_dict(config)
    except (ValueError, TypeError, KeyError):
        return False
    for part in ("conditions", "policies"):  # rows are keyed by name: the same name, the same
        recorded_parts = {item.name: item for item in getattr(before, part)}
        if any(recorded_parts.get(item.name, item) != item for item in getattr(suite, part)):
            return False
    before = replace(
        before, seeds=suite.seeds, conditions=suite.conditions, policies=suite.policies
    )
    if suite.world.type == "sim" and before.world.type == "sim":
        before = replace(before, judge=suite.judge)
    return before.hash() == suite.hash()


def check_run_dir(out_dir: Path, suite: Suite) -> None:
    """Refuse to mix episodes of two different suites, or of two versions of its bundle, in one log.

    A suite that differs only in its seeds is the same suite: adding seeds to a finished run
    runs only the new starts (callers aggregate :meth:`EpisodeLog.rows_for` the suite's keys).
    So is a sim suite that differs only in its (unused) judge; see :func:`continues`.
    """
    recorded = recorded_run(out_dir)
    if recorded and recorded.get("suite_sha256") != suite.hash() and not continues(recorded, suite):
        raise ValueError(
            f"{out_dir} holds a run of a different suite (sha256 {str(recorded.get('suite_sha256'))[:12]} vs "
            f"{suite.hash()[:12]}): {REFUSE_RESUME}"
        )
    bundle = bundle_fingerprint(suite)
    if recorded.get("bundle_sha256", bundle) != bundle:
        raise ValueError(
            f"{out_dir} holds episodes of another version of {results_bundle(suite)} (bundle "
            f"sha256 {str(recorded['bundle_sha256'])[:12]} vs {bundle[:12]}; retrained since?): "
            f"{REFUSE_RESUME}"
        )


def check_judge(out_dir: Path, judge_id: str, prompt_hash: str) -> None:
    """Refuse to resume a log judged by another judge (or another version of it: a retrained
    probe has other weights, a VLM judge another prompt)."""
    recorded = recorded_run(out_dir)
    before = (recorded.get("judge", judge_id), recorded.get("judge_prompt_sha256", prompt_hash))
    if before != (judge_id, prompt_hash):
        raise ValueError(
            f"{out_dir} holds episodes judged by {before[0]} (sha256 {before[1][:12] or '-'}), "
            f"not {judge_id} (sha256 {prompt_hash[:12] or '-'}; retrained since?): {REFUSE_RESUME}"
        )


# ------------------------------------------------------------------ building blocks
def build_policy_factory(suite: Suite) -> Callable[[EpisodeKey], Any]:
    """``factory(key)`` -> a fresh policy object for one episode.

    Each named policy is loaded once (``policies.registry.load_policy``); episodes get deep
    copies, so stateful policies (chunks, plans) never share state. A policy that plans from
    the start state (``for_start(task, seed)``, e.g. the expert plans) is specialised per start.
    A policy with a numpy generator ``rng`` (the random baseline) gets one seeded per episode,
    so results do not depend on which episodes ran before or in which process. A policy entry
    with ``noise`` is wrapped in :class:`policies.wrappers.ActionNoise`, seeded per episode too.
    """
    from policies.registry import load_policy
    from policies.wrappers import ActionNoise

    loaded: dict[str, Any] = {}

    def factory(key: EpisodeKey):
        if key.policy not in loaded:
            spec = suite.policy(key.policy)
            options = dict(spec.options)
            if plans_in_suite_bundle(spec) and suite.world.bundle:
                options["model"] = suite.world.bundle
            loaded[key.policy] = load_policy(spec.spec, **options)
            loaded[key.policy].name = key.policy
        prototype = loaded[key.policy]
        if hasattr(prototype, "for_start"):
            policy = prototype.for_start(key.task, key.seed)
        else:
            policy = copy.deepcopy(prototype)
        if isinstance(getattr(policy, "rng", None), np.random.Generator):
            policy.rng = np.random.default_rng(episode_seed(suite, key, POLICY_SALT))
        noise = suite.policy(key.policy).noise
        if noise:
            policy = ActionNoise(policy, noise, seed=episode_seed(suite, key, NOISE_SALT))
        policy.name = key.policy
        return policy

    return factory


def check_policies(suite: Suite, keys: list[EpisodeKey], factory=None) -> Callable:
    """Build every policy that ``keys`` name once, before any episode runs; returns the factory.

    Raises:
        WmGymError: naming each policy that cannot be built and why (an unknown name, a
            mistyped option, a checkpoint that does not exist), so that a run never spends its
            world model on episodes that can only become error rows.
    """
    from wm_env.errors import WmGymError

    factory = factory or build_policy_factory(suite)
    failures = {}
    for name in dict.fromkeys(key.policy for key in keys):
        key = next(k for k in keys if k.policy == name)
        try:
            factory(key)
        except Exception as error:  # noqa: BLE001 - reported together below
            failures[name] = f"{type(error).__name__}: {error}"
    if failures:
        lines = "\n".join(f"  {name}: {why}" for name, why in failures.items())
        raise WmGymError(
            f"{len(failures)} policies of suite {suite.name!r} cannot be built:\n{lines}"
        )
    return factory


def check_editors(suite: Suite, keys: list[EpisodeKey]) -> None:
    """Build the image editor of every distractor condition ``keys`` use in a world-model suite
    before any episode runs, so a mistyped editor stops the run instead of failing after the
    clean condition's episodes (an unknown name raises with a did-you-mean)."""
    if suite.world.type != "world_model":
        return
    from benchmarks.worlds import WorldModelWorld

    for name in dict.fromkeys(key.condition for key in keys):
        condition = suite.condition(name)
        if condition.type == "distractors":
            WorldModelWorld.build_editor(condition)


def build_judge(suite: Suite):
    """The judge of a world-model suite (``None`` in the sim: its oracle decides)."""
    if suite.world.type == "sim":
        return None
    from judges.registry import load_judge

    return load_judge(suite.judge.spec, path=suite.judge.path, **suite.judge.options)


def judge_identity(suite: Suite, judge) -> tuple[str, str]:
    if judge is None:
        return "oracle", ""
    return str(getattr(judge, "name", type(judge).__name__)), str(getattr(judge, "prompt_hash", ""))


def chunks(suite: Suite, keys: list[EpisodeKey], batch: int) -> Iterator[list[EpisodeKey]]:
    """Group keys into runnable chunks: same condition (and task in the sim), <= ``batch``."""
    groups: dict[tuple, list[EpisodeKey]] = {}
    for key in keys:
        group = (key.condition,) if suite.world.type == "world_model" else (key.condition, key.task)
        groups.setdefault(group, []).append(key)
    for members in groups.values():
        for i in range(0, len(members), batch):
            yield members[i : i + batch]


def result_row(result: EpisodeResult, judge, judge_id: str) -> dict[str, Any]:
    """Judge one episode (the sim's oracle when ``judge`` is None) into a log row."""
    key = result.key
    success, score, error = None, None, result.error
    if error is None:
        if judge is None:
            success, score = result.true_success, float(bool(result.true_success))
        else:
            try:
                verdict = judge.judge(result.frames, result.instruction)
                success, score = verdict.success, verdict.score
            except Exception as failure:  # noqa: BLE001 - a judge failure is an error row
                error = f"judge {type(failure).__name__}: {failure}"
    return {
        "policy": key.policy,
        "task": key.task,
        "condition": key.condition,
        "seed": key.seed,
        "index": key.index,
        "start_id": key.start_id,
        "instruction": result.instruction,
        "success": success,
        "score": score,
        "judge": judge_id,
        "steps": result.steps,
        "seconds": round(result.seconds, 4),
        "ms_per_step": round(1000 * result.seconds / max(result.steps, 1), 3),
        "error": error,
    }


def episode_file(out_dir: Path, key: EpisodeKey) -> Path:
    """Where an episode's actions (and, for sampled episodes, frames) are saved."""
    name = f"{key.task}-{key.condition}-{key.seed}-{key.index}.npz"
    return out_dir / "episodes" / key.policy / name


def save_episode(out_dir: Path, result: EpisodeResult) -> None:
    path = episode_file(out_dir, result.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"actions": result.actions}
    if result.key.index < VIDEOS_PER_CELL:
        arrays["frames"] = np.asarray(result.frames)
    temporary = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(temporary, **arrays)
    os.replace(temporary, path)


# ------------------------------------------------------------------ running
class ChunkRunner:
    """Holds one process's world, policies and judge; runs chunks into rows."""

    def __init__(self, suite: Suite, out_dir: Path, threads: int = 1, policy_for=None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.suite = suite
        self.out_dir = out_dir
        if suite.world.type == "world_model":
            starts = render_starts(
                suite.tasks, suite.seeds, suite.world.resolution, out_dir / "starts"
            )
            self.world = WorldModelWorld(suite, starts)
        else:
            self.world = SimWorld(suite)
        self.policy_for = policy_for or build_policy_factory(suite)
        self.judge = build_judge(suite)
        self.judge_id, self.prompt_hash = judge_identity(suite, self.judge)

    def run(self, keys: list[EpisodeKey]) -> list[dict[str, Any]]:
        policies = []
        for key in keys:
            try:
                policies.append(self.policy_for(key))
            except Exception as error:  # noqa: BLE001 - a policy that cannot load: error rows
                policies.append(_BrokenPolicy(key.policy, f"{type(error).__name__}: {error}"))
        rows = []
        for result in self.world.run(keys, policies):
            save_episode(self.out_dir, result)
            rows.append(result_row(result, self.judge, self.judge_id))
        return rows

    def close(self) -> None:
        self.world.close()


class _BrokenPolicy:
    """Stands in for a policy that failed to load: its episodes become error rows."""

    def __init__(self, name: str, error: str) -> None:
        self.name, self.error = name, error

    def reset(self, instruction: str) -> None:
        raise RuntimeError(self.error)

    def act(self, obs):
        raise RuntimeError(self.error)


def _run_chunk_in_worker(
    suite_dict: dict, out_dir: str, keys: list[tuple], threads: int
) -> list[dict[str, Any]]:
    """Entry point of worker processes and Ray tasks (plain data in and out).

    A local worker whose parent died (a killed ``wmgym bench`` run) exits instead of running
    the chunks still queued for it: nobody would record their results.
    """
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():
        raise SystemExit("the process that started this worker is gone")
    suite = suite_from_dict(suite_dict)
    runner = _worker_runner(suite, Path(out_dir), threads)
    return runner.run([EpisodeKey(*k) for k in keys])


_WORKER_RUNNERS: dict[str, ChunkRunner] = {}


def _worker_runner(suite: Suite, out_dir: Path, threads: int) -> ChunkRunner:
    """One runner per worker process and suite (the world model loads once per worker)."""
    key = suite.hash() + str(out_dir)
    if key not in _WORKER_RUNNERS:
        _WORKER_RUNNERS[key] = ChunkRunner(suite, out_dir, threads)
    return _WORKER_RUNNERS[key]


def run_suite(suite: Suite, out_dir: str | Path, options: RunOptions = RunOptions()) -> EpisodeLog:
    """Run every missing episode of ``suite`` into ``out_dir`` (see the module docstring)."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_run_dir(out_dir, suite)
    log = EpisodeLog(out_dir / LOG_NAME)
    missing = log.missing(suite.episode_keys(), retry_errors=options.retry_errors)
    policy_for = check_policies(suite, missing) if missing else None
    if missing:
        check_editors(suite, missing)
    local = options.workers <= 1 and options.ray_address is None
    runner = (
        ChunkRunner(suite, out_dir, options.torch_threads, policy_for)
        if local or not missing
        else None
    )
    if runner is not None:
        judge_id, prompt_hash = runner.judge_id, runner.prompt_hash
    else:
        judge_id, prompt_hash = judge_identity(suite, build_judge(suite))
    check_judge(out_dir, judge_id, prompt_hash)
    record = {**provenance(suite, judge_id, prompt_hash), "suite_config": suite.to_dict()}
    (out_dir / RUN_NAME).write_text(json.dumps(record, indent=1, default=str))
    if not missing:
        return log
    batch = runner.world.batch_size if runner is not None else _batch_size(suite)
    todo = list(chunks(suite, missing, batch))
    bar = tqdm(total=len(missing), desc=f"{suite.name} ({suite.world.type})", unit="episode",
               disable=not options.progress)  # fmt: skip
    successes = judged = 0

    def take(rows: list[dict[str, Any]]) -> None:
        nonlocal successes, judged
        for row in rows:
            log.append(row)
            if row["success"] is not None:
                judged += 1
                successes += bool(row["success"])
        bar.update(len(rows))
        bar.set_postfix(success=f"{successes}/{judged}")

    try:
        if runner is not None:
            for chunk in todo:
                take(runner.run(chunk))
        elif options.ray_address is not None:
            _run_on_ray(suite, out_dir, todo, options, take)
        else:
            _run_in_processes(suite, out_dir, todo, options, take)
    finally:
        bar.close()
        if runner is not None:
            runner.close()
    return log


def _batch_size(suite: Suite) -> int:
    return suite.world.num_envs if suite.world.type == "world_model" else 1


def _run_in_processes(suite, out_dir, todo, options: RunOptions, take) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")  # robosuite/EGL and torch dislike fork
    with ProcessPoolExecutor(options.workers, mp_context=context) as pool:
        futures = [
            pool.submit(
                _run_chunk_in_worker,
                suite.to_dict(),
                str(out_dir),
                [k.as_tuple() for k in chunk],
                options.torch_threads,
            )
            for chunk in todo
        ]
        for future in as_completed(futures):
            take(future.result())


def _run_on_ray(suite, out_dir, todo, options: RunOptions, take) -> None:
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            "--ray-address needs Ray: pip install 'wm-gym[ray]' (or `pip install ray`)"
        ) from error
    if not ray.is_initialized():
        address = None if options.ray_address == "local" else options.ray_address
        ray.init(address=address, num_cpus=None if address else max(options.workers, 1))
    threads = options.threads or 1  # a Ray task reserves this many CPUs and uses as many threads
    task = ray.remote(num_cpus=threads)(_run_chunk_in_worker)
    pending = [
        task.remote(suite.to_dict(), str(out_dir), [k.as_tuple() for k in chunk], threads)
        for chunk in todo
    ]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        take(ray.get(done[0]))
