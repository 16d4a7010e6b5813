"""The episode collector (wm_env.sim.collect): dataset contents, replayability, resume, kill."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import wm_env
from wm_env.dataset.lerobot import LeRobotDataset
from wm_env.sim.tasks import all_instructions, get_family

pytestmark = pytest.mark.sim

LOSSY_MAE = 3.0  # mean abs error (grey levels) allowed between a video frame and the sim's frame


def episode_files(root: Path, episode: int) -> list[Path]:
    """Every file of one episode in our one-episode-per-file layout (data, videos, meta row)."""
    name = f"chunk-000/file-{episode:03d}"
    files = [p for p in root.rglob("*") if p.is_file() and name in p.as_posix()]
    assert {p.relative_to(root).parts[0] for p in files} >= {"data", "videos", "meta"}
    return files


def mtimes(files: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in files}


def test_collected_dataset_has_the_expected_episodes(lift_push_dataset):
    """Two episodes (lift, push) of T+1 frames and T+1 actions, the last action row a null one
    marked invalid; instructions are the family's templates with consistent task indices; the
    success column is the final per-step success."""
    dataset = LeRobotDataset(lift_push_dataset)
    assert dataset.num_episodes == 2
    assert dataset.fps == 5
    for ep, family in enumerate(["lift", "push"]):
        steps = gym.spec(wm_env.sim_env_id(family)).max_episode_steps
        meta = dataset.episode_meta(ep)
        assert meta["family"] == family and meta["quality_level"] == 1.0
        assert dataset.length(ep) == steps + 1
        assert dataset.frames(ep).shape == (steps + 1, 64, 64, 3)
        actions = dataset.actions(ep)
        assert actions.shape == (steps + 1, 7)
        np.testing.assert_array_equal(dataset.action_valid(ep), np.arange(steps + 1) < steps)
        np.testing.assert_array_equal(actions[-1], 0.0)
        assert np.all(np.abs(actions[:-1]) <= 1.0) and np.any(actions[:-1] != 0)
        assert dataset.states(ep).shape == (steps + 1, 8)

        instruction = dataset.instruction(ep)
        assert instruction in get_family(family).instructions()
        assert instruction == meta["start"]["spec"]["instruction"]
        np.testing.assert_array_equal(
            dataset.column(ep, "task_index"), all_instructions().index(instruction)
        )
        assert dataset.tasks.loc[instruction, "task_index"] == all_instructions().index(instruction)
        assert dataset.success(ep) == bool(dataset.success_per_step(ep)[-1])
        assert not dataset.success_per_step(ep)[0]
    index = np.concatenate([dataset.column(ep, "index") for ep in (0, 1)])
    np.testing.assert_array_equal(index, np.arange(dataset.num_frames))


@pytest.mark.parametrize("ep", [0, 1])
def test_recorded_start_and_actions_replay_in_a_fresh_env(lift_push_dataset, sim_env_factory, ep):
    """episode_meta(ep)["start"] restores, in another env instance, a first frame matching the
    video within lossy-codec tolerance; replaying the recorded actions reproduces the recorded
    states exactly, every frame within tolerance, and the recorded success."""
    dataset = LeRobotDataset(lift_push_dataset)
    meta = dataset.episode_meta(ep)
    env = sim_env_factory(meta["family"])
    env.reset(seed=12345)  # some other episode first
    obs, info = env.reset(options={"start": meta["start"]})
    video, states = dataset.frames(ep), dataset.states(ep)
    assert obs["instruction"] == dataset.instruction(ep)
    assert np.abs(obs["image"].astype(float) - video[0]).mean() < LOSSY_MAE
    np.testing.assert_array_equal(info["proprio"], states[0])

    valid = dataset.action_valid(ep)
    for t, action in enumerate(dataset.actions(ep)[valid], start=1):
        obs, _, _, _, info = env.step(action)
        np.testing.assert_array_equal(info["proprio"], states[t], err_msg=f"step {t}")
        error = np.abs(obs["image"].astype(float) - video[t]).mean()
        assert error < LOSSY_MAE, f"frame {t}: mean abs error {error:.2f}"
    assert info["success"] == dataset.success(ep)


def recorded_episodes(monkeypatch) -> list[int]:
    """The list the collector's episode recordings are appended to, from now on."""
    import wm_env.sim.collect as collect_module

    recorded, record_episode = [], collect_module.record_episode

    def spy(config, episode):
        recorded.append(episode)
        return record_episode(config, episode)

    monkeypatch.setattr(collect_module, "record_episode", spy)
    return recorded


def test_resume_runs_only_the_missing_episodes(lift_push_dataset, tmp_path, monkeypatch):
    """Collecting 3 episodes into a 2-episode dataset records only episode 2 and leaves the
    files of episodes 0 and 1 untouched."""
    import wm_env.sim.collect as collect_module

    root = tmp_path / "data"
    shutil.copytree(lift_push_dataset, root)  # copy2 keeps modification times
    before = mtimes(episode_files(root, 0) + episode_files(root, 1))
    recorded = recorded_episodes(monkeypatch)
    config = collect_module.CollectConfig(family="lift,push", episodes=3, workers=1, out=root)
    dataset = collect_module.collect(config, progress=False)

    assert recorded == [2]
    assert mtimes(list(before)) == before
    assert dataset.num_episodes == 3
    assert dataset.episode_meta(2)["family"] == "lift"  # episode e uses family e mod 2
    index = np.concatenate([dataset.column(ep, "index") for ep in range(3)])
    np.testing.assert_array_equal(index, np.arange(dataset.num_frames))


def test_repair_records_unreadable_episodes_again(lift_push_dataset, tmp_path, monkeypatch):
    """A truncated mp4 of episode 1: ``repair`` finds it, records episode 1 again (and nothing
    else), and the dataset decodes in full, with the frames it had before."""
    import wm_env.sim.collect as collect_module
    from wm_env.dataset.info import unreadable_episodes

    root = tmp_path / "data"
    shutil.copytree(lift_push_dataset, root)
    before = LeRobotDataset(root)
    original = {"frames": before.frames(1, "image"), "actions": before.actions(1),
                "states": before.states(1), "start": before.episode_meta(1)["start"]}  # fmt: skip
    video = next(p for p in episode_files(root, 1) if p.suffix == ".mp4")
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    assert [ep for ep, _, _ in unreadable_episodes(LeRobotDataset(root))] == [1]
    recorded = recorded_episodes(monkeypatch)
    config = collect_module.CollectConfig(family="lift,push", episodes=2, workers=1, out=root)
    collect_module.collect(config, progress=False)  # without repair: nothing to record
    assert recorded == []
    dataset = collect_module.collect(
        dataclasses.replace(config, repair=True), progress=False
    )  # the same settings: repair is not part of the dataset's identity
    assert recorded == [1]
    assert unreadable_episodes(dataset) == []
    np.testing.assert_array_equal(dataset.actions(1), original["actions"])
    np.testing.assert_array_equal(dataset.states(1), original["states"])
    assert dataset.episode_meta(1)["start"] == original["start"]
    frames = dataset.frames(1, "image").astype(float)  # rendered again: equal up to the codec
    assert frames.shape == original["frames"].shape
    assert np.abs(frames - original["frames"]).mean() < LOSSY_MAE


def test_resume_with_other_settings_is_refused(lift_push_dataset, tmp_path):
    """Resuming a dataset with a different setting (resolution) raises ValueError and leaves the
    dataset as it was."""
    from wm_env.sim.collect import CollectConfig, collect

    root = tmp_path / "data"
    shutil.copytree(lift_push_dataset, root)
    files_before = sorted(p for p in root.rglob("*") if p.is_file())
    config = CollectConfig(family="lift,push", episodes=3, workers=1, out=root, resolution=128)
    with pytest.raises(ValueError, match="different configuration"):
        collect(config, progress=False)
    assert sorted(p for p in root.rglob("*") if p.is_file()) == files_before
    assert LeRobotDataset(root).num_episodes == 2


def _wmgym() -> list[str]:
    script = Path(sys.executable).with_name("wmgym")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wmgym.cli"]


def test_killed_collection_resumes_to_the_same_dataset(sim_available, tmp_path):
    """`wmgym data collect` killed (SIGKILL) after 2 finished episodes, then rerun, ends with
    exactly 4 episodes with contiguous global indices whose actions equal those of a clean,
    uninterrupted collection of the same config."""
    from wm_env.sim.collect import CollectConfig, collect

    root = tmp_path / "killed"
    command = [*_wmgym(), "data", "collect", "--family", "lift", "--episodes", "4"]
    command += ["--workers", "1", "--out", str(root)]
    meta_files = root / "meta" / "episodes" / "chunk-000"
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while len(list(meta_files.glob("file-*.parquet"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no 2 episodes within 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    done_at_kill = len(list(meta_files.glob("file-*.parquet")))
    assert 2 <= done_at_kill < 4
    assert not (root / "meta" / "info.json").exists()  # never finalized

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "4 episodes" in rerun.stdout

    resumed = LeRobotDataset(root)
    assert resumed.num_episodes == 4
    np.testing.assert_array_equal(resumed.episode_ids, np.arange(4))
    lengths = resumed.episodes["length"].to_numpy()
    np.testing.assert_array_equal(
        resumed.episodes["dataset_from_index"].to_numpy(), np.cumsum(lengths) - lengths
    )
    index = np.concatenate([resumed.column(ep, "index") for ep in range(4)])
    np.testing.assert_array_equal(index, np.arange(resumed.num_frames))
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no temp files left

    clean = collect(
        CollectConfig(family="lift", episodes=4, workers=1, out=tmp_path / "clean"), progress=False
    )
    for ep in range(4):
        np.testing.assert_array_equal(resumed.actions(ep), clean.actions(ep), err_msg=f"ep {ep}")
        assert resumed.success(ep) == clean.success(ep)
        assert resumed.episode_meta(ep)["start"] == clean.episode_meta(ep)["start"]


def test_resumed_dataset_keeps_its_task_indices_when_the_bank_changes(tmp_path, monkeypatch):
    import pandas as pd

    import wm_env.sim.collect as collect_module

    bank = ["lift the red cube", "push the red cube to the forward", "stack red on blue"]
    monkeypatch.setattr(collect_module, "all_instructions", lambda: list(bank))
    assert collect_module.dataset_tasks(tmp_path) == bank  # a new dataset: the bank's order
    (tmp_path / "meta").mkdir()
    old = pd.DataFrame({"task_index": [0, 1, 2]}, index=pd.Index(bank, name="task"))
    old.iloc[::-1].to_parquet(tmp_path / "meta" / "tasks.parquet")  # row order is not the index
    reworded = ["lift the red cube", "push the red cube to the front", "stack red on blue"]
    monkeypatch.setattr(collect_module, "all_instructions", lambda: list(reworded))
    tasks = collect_module.dataset_tasks(tmp_path)
    assert tasks[:3] == bank  # episodes on disk keep pointing at their instruction
    assert tasks[3:] == ["push the red cube to the front"]  # the new wording is appended
