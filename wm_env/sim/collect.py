"""``wmgym data collect``: record scripted-expert episodes of the sim as a LeRobot v3 dataset.

Episode ``e`` is fully determined by the config and ``e`` (its family, expert quality and
seeds), so the result does not depend on the number of workers, and an interrupted collection
resumes by running only the episodes whose files are missing. With ``repair``, episodes of a
finished dataset whose files cannot be decoded (a truncated parquet or mp4) are discarded first
and recorded again, bit for bit as they would have been.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from wm_env.dataset.lerobot import LeRobotDataset, LeRobotWriter
from wm_env.dataset.record import EpisodeRecord
from wm_env.sim.experts import ExpertQuality
from wm_env.sim.tasks import FAMILIES, all_instructions, get_family
from wm_env.spaces import camera_of_key

STATE_NAMES = ["eef_x", "eef_y", "eef_z", "eef_qx", "eef_qy", "eef_qz", "eef_qw", "gripper_opening"]


@dataclass(frozen=True)
class CollectConfig:
    """Record scripted-expert episodes of the ground-truth sim.

    Attributes:
        family: task family (lift, stack, push, place), a comma-separated list, or ``all``;
            episode ``e`` uses family ``e mod #families``.
        episodes: total number of episodes in the dataset.
        out: dataset directory (LeRobot v3 layout); rerun the same command to resume.
        resolution: square image size (64, 128 or 256).
        extra_cameras: extra cameras to record besides the main one (wrist, front).
        num_distractors: distractor objects per episode (kinds and colors no task uses).
        quality: expert quality levels in [0, 1] (1 = expert); episodes cycle through them.
        control_steps: controller steps (at 20 Hz) per env step: 4 gives a 5 Hz dataset.
        episode_steps: env steps per episode (default: the family's time limit).
        seed: base seed; episode ``e`` resets with ``seed * 100003 + e``.
        workers: parallel processes (one sim each).
        repair: before resuming a finished dataset, decode every episode (``wmgym data info
            --check``) and record again the ones that cannot be read whole.
    """

    family: str = "lift"
    episodes: int = 10
    out: Path = Path("data/sim")
    resolution: int = 64
    extra_cameras: tuple[str, ...] = ()
    num_distractors: int = 0
    quality: tuple[float, ...] = (1.0,)
    control_steps: int = 4
    episode_steps: int | None = None
    seed: int = 0
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    repair: bool = False

    def __post_init__(self) -> None:
        families = self.families  # validates the names
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1; got {self.episodes}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1; got {self.workers}")
        if not self.quality:
            raise ValueError("quality needs at least one level")
        for level in self.quality:
            ExpertQuality.from_level(level)  # validates the range
        if self.episode_steps is not None and self.episode_steps < 1:
            raise ValueError(f"episode_steps must be >= 1; got {self.episode_steps}")
        del families

    @property
    def families(self) -> list[str]:
        """The family names, validated (``all`` expands to every family)."""
        if self.family == "all":
            return list(FAMILIES)
        names = [name.strip().lower() for name in self.family.split(",") if name.strip()]
        for name in names:
            get_family(name)
        if not names:
            raise ValueError("family must name at least one task family")
        return names

    @property
    def fps(self) -> float:
        return 20.0 / self.control_steps

    def episode_plan(self, episode: int) -> tuple[str, float, int]:
        """(family, quality level, reset seed) of episode ``episode``."""
        families = self.families
        family = families[episode % len(families)]
        level = self.quality[(episode // len(families)) % len(self.quality)]
        return family, level, self.seed * 100003 + episode

    def identity(self) -> dict:
        """The settings a resumed run must share (not the episode count or worker count)."""
        data = dataclasses.asdict(self)
        for volatile in ("episodes", "workers", "out", "repair"):
            data.pop(volatile)
        return data


# One sim per family per worker process, built on first use (a build takes seconds).
_ENVS: dict[tuple, object] = {}


def _env_for(config: CollectConfig, family: str):
    import gymnasium as gym

    import wm_env

    key = (
        family,
        config.resolution,
        config.extra_cameras,
        config.num_distractors,
        config.control_steps,
    )
    if key not in _ENVS:
        _ENVS[key] = gym.make(
            wm_env.sim_env_id(family),
            resolution=config.resolution,
            extra_cameras=config.extra_cameras,
            num_distractors=config.num_distractors,
            control_steps=config.control_steps,
        )
    return _ENVS[key]


def record_episode(config: CollectConfig, episode: int) -> EpisodeRecord:
    """Run the scripted expert for episode ``episode`` of ``config``."""
    from wm_env.sim.rollout import run_expert

    family, level, seed = config.episode_plan(episode)
    env = _env_for(config, family)
    obs, info = env.reset(seed=seed)
    steps = config.episode_steps or env.spec.max_episode_steps
    quality = ExpertQuality.from_level(level)
    start = env.unwrapped.start_state()
    rollout = run_expert(env, obs, info, quality, seed=seed + 1, num_steps=steps)
    return EpisodeRecord(
        episode_index=episode,
        frames={camera_of_key(key): video for key, video in rollout.frames.items()},
        actions=rollout.actions,
        states=rollout.proprio,
        instruction=rollout.instruction,
        success=rollout.success,
        success_per_step=rollout.success_per_step,
        meta={
            "family": family,
            "quality_level": level,
            "quality": dataclasses.asdict(quality),
            "seed": seed,
            "expert": rollout.info,
            "num_distractors": len(start["spec"]["distractors"]),
            "start": start,
        },
    )


def dataset_tasks(root: str | Path) -> list[str]:
    """The task list of a dataset being collected: ``tasks[i]`` is task_index ``i``.

    A dataset that was finalized before keeps its task indices (episodes on disk refer to
    them), and instructions the sim has gained since (a reworded template) are appended, so a
    dataset resumed after the instruction bank changed stays consistent.
    """
    from wm_env.dataset.lerobot import TASKS_PATH, load_tasks

    if not (Path(root) / TASKS_PATH).exists():
        return all_instructions()
    existing = load_tasks(root)["task_index"].sort_values().index.tolist()
    known = set(existing)
    return existing + [t for t in all_instructions() if t not in known]


def _collect_one(config: CollectConfig, episode: int, tasks: list[str]) -> tuple[int, bool]:
    writer = _writer(config)
    record = record_episode(config, episode)
    writer.write_episode(record, tasks.index(record.instruction))
    return episode, record.success


def _writer(config: CollectConfig) -> LeRobotWriter:
    return LeRobotWriter(
        config.out,
        fps=config.fps,
        state_names=STATE_NAMES,
        extra_info={"collect": config.identity()},
    )


def repair_unreadable(root: Path, writer: LeRobotWriter, progress: bool = True) -> list[int]:
    """Discard the episodes of a finished dataset that cannot be decoded; return their ids
    (nothing to do for a dataset that was never finished: its episodes are listed in no
    ``info.json`` yet, and the files of unfinished ones are removed as partial anyway)."""
    from wm_env.dataset.info import unreadable_episodes
    from wm_env.dataset.lerobot import INFO_PATH

    if not (Path(root) / INFO_PATH).is_file():
        return []
    broken = sorted({ep for ep, _, _ in unreadable_episodes(LeRobotDataset(root), progress)})
    if broken:
        writer.discard_episodes(broken)
        print(f"recording again {len(broken)} unreadable episodes: {broken[:20]}")
    return broken


def collect(config: CollectConfig, progress: bool = True) -> LeRobotDataset:
    """Record the episodes of ``config`` that are not on disk yet, then finalize the dataset."""
    writer = _writer(config)  # also refuses to resume a dataset made with other settings
    writer.remove_partial()
    if config.repair:
        repair_unreadable(config.out, writer, progress)
    tasks = dataset_tasks(config.out)
    pending = sorted(set(range(config.episodes)) - writer.completed_episodes())
    bar = tqdm(
        total=config.episodes,
        initial=config.episodes - len(pending),
        desc="episodes",
        disable=not progress,
    )
    successes = []
    if config.workers == 1 or len(pending) <= 1:
        for episode in pending:
            successes.append(_collect_one(config, episode, tasks)[1])
            bar.update()
            bar.set_postfix(success=f"{np.mean(successes):.2f}")
    else:
        with ProcessPoolExecutor(config.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_collect_one, config, episode, tasks) for episode in pending]
            for future in as_completed(futures):
                successes.append(future.result()[1])
                bar.update()
                bar.set_postfix(success=f"{np.mean(successes):.2f}")
    bar.close()
    return writer.finalize(tasks)
