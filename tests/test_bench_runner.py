"""Running suites end to end: world-model batches, resume, error rows, the sim world, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import runner as runner_module
from benchmarks.episode_log import EpisodeLog
from benchmarks.runner import RunOptions, episode_file, run_suite
from benchmarks.suite import suite_from_dict
from judges.base import Verdict
from policies.base import check_observation

pytestmark = pytest.mark.sim  # starts are rendered by the sim


class BrightnessJudge:
    """A deterministic stand-in judge: success when the last frame is brighter than the first."""

    name = "brightness"
    prompt_hash = "none"

    def judge(self, frames, instruction):
        delta = float(frames[-1].mean()) - float(frames[0].mean())
        return Verdict(delta > 0, 1.0 if delta > 0 else 0.0, f"{delta:.2f}")


class FailingPolicy:
    """A remote policy whose server goes down at the second request."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0

    def reset(self, instruction):
        self.calls = 0

    def act(self, obs):
        self.calls += 1
        if self.calls >= 2:
            raise ConnectionError("http://127.0.0.1:1/act is down")
        return np.zeros(7, np.float32)


def wm_suite(bundle, **change):
    raw = {
        "name": "t",
        "world": {"type": "world_model", "bundle": str(bundle), "num_envs": 4},
        "tasks": ["lift"],
        "seeds": [0, 1, 2],
        "episode_length": 3,
        "policies": [{"name": "random", "spec": "random"}, {"name": "zero", "spec": "zero"}],
        "conditions": [
            {"name": "clean"},
            {"name": "distract", "type": "distractors", "count": 1},
            {"name": "para", "type": "instruction"},
        ],
        "judge": {"spec": "probe", "path": "unused"},
    }
    return suite_from_dict({**raw, **change})


@pytest.fixture
def stand_in_judge(monkeypatch):
    monkeypatch.setattr(runner_module, "build_judge", lambda suite: BrightnessJudge())


def test_world_model_suite_runs_batched_and_resumes(
    tiny_bundle, tmp_path, stand_in_judge, monkeypatch, sim_available
):
    from wm_env.world_model import WorldModel

    calls, decoded = [], []
    original_step = WorldModel.step

    def counting_step(self, actions, decode=True):
        calls.append(len(actions))
        decoded.append(decode)
        return original_step(self, actions, decode)

    monkeypatch.setattr(WorldModel, "step", counting_step)
    suite = wm_suite(tiny_bundle)
    log = run_suite(suite, tmp_path, RunOptions(progress=False))
    assert len(log) == 2 * 3 * 3  # policies x conditions x seeds
    # one batched model call per step for up to num_envs episodes: 3 conditions x 2 batches
    # (6 episodes per condition in batches of 4) x 3 steps
    assert calls == [4] * (3 * 2 * 3)
    assert not any(decoded)  # random and zero never look: no frame is decoded while stepping
    rows = {(r["policy"], r["condition"], r["seed"]): r for r in log.rows}
    assert all(
        r["steps"] == 3 and r["error"] is None and r["judge"] == "brightness" for r in log.rows
    )
    assert rows[("zero", "para", 0)]["instruction"] != rows[("zero", "clean", 0)]["instruction"]
    # sampled episodes keep their frames (for GIFs); every episode keeps its actions
    with np.load(episode_file(tmp_path, suite.episode_keys()[0])) as data:
        assert data["frames"].shape[0] == 4 and data["actions"].shape == (3, 7)
    # the distractor condition really edits the start the model sees
    clean_key = next(k for k in suite.episode_keys() if k.condition == "clean" and k.index == 0)
    edited_key = next(k for k in suite.episode_keys() if k.condition == "distract" and k.index == 0)
    with (
        np.load(episode_file(tmp_path, clean_key)) as a,
        np.load(episode_file(tmp_path, edited_key)) as b,
    ):
        assert np.abs(a["frames"][0].astype(int) - b["frames"][0].astype(int)).max() > 30

    # kill -9 mid-write of the last row: a re-run runs only that episode
    path = tmp_path / "episodes.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])
    calls.clear()
    with pytest.warns(UserWarning, match="partially written"):
        resumed = run_suite(suite, tmp_path, RunOptions(progress=False))
    assert len(resumed) == 18 and len(calls) == 3  # one batch of one episode, 3 steps
    assert len(path.read_text().splitlines()) == 18
    calls.clear()
    assert len(run_suite(suite, tmp_path, RunOptions(progress=False))) == 18 and calls == []

    # the same out dir with another suite is refused instead of mixing results
    with pytest.raises(ValueError, match="different suite"):
        run_suite(wm_suite(tiny_bundle, episode_length=4), tmp_path, RunOptions(progress=False))
    # ... and so is the same suite with a retrained judge (a probe's hash is its weights')
    retrained = BrightnessJudge()
    retrained.prompt_hash = "retrained"
    monkeypatch.setattr(runner_module, "build_judge", lambda suite: retrained)
    with pytest.raises(ValueError, match="judged by brightness"):
        run_suite(suite, tmp_path, RunOptions(progress=False))


def test_more_seeds_run_only_the_new_starts(
    tiny_bundle, tmp_path, stand_in_judge, monkeypatch, sim_available
):
    """A finished run given more seeds runs only their episodes and keeps the old rows."""
    from wm_env.world_model import WorldModel

    calls = []
    original_step = WorldModel.step

    def counting_step(self, actions, decode=True):
        calls.append(len(actions))
        return original_step(self, actions, decode)

    monkeypatch.setattr(WorldModel, "step", counting_step)
    small = {"policies": [{"name": "zero", "spec": "zero"}], "conditions": [{"name": "clean"}]}
    first = run_suite(
        wm_suite(tiny_bundle, seeds=[0, 1], **small), tmp_path, RunOptions(progress=False)
    )
    before = [dict(row) for row in first.rows]
    calls.clear()
    more = wm_suite(tiny_bundle, seeds=[0, 1, 2], **small)
    log = run_suite(more, tmp_path, RunOptions(progress=False))
    assert len(calls) == 3  # one batch (the one new episode) of 3 steps
    assert len(log) == 3 and log.rows[:2] == before
    assert json.loads((tmp_path / "run.json").read_text())["suite_sha256"] == more.hash()
    # fewer seeds: nothing runs, and the suite's rows are only its seeds' episodes
    calls.clear()
    fewer = wm_suite(tiny_bundle, seeds=[0], **small)
    log = run_suite(fewer, tmp_path, RunOptions(progress=False))
    assert calls == [] and [r["seed"] for r in log.rows_for(fewer.episode_keys())] == [0]
    # anything else changed is still another suite
    with pytest.raises(ValueError, match="different suite"):
        run_suite(wm_suite(tiny_bundle, seeds=[0], episode_length=2, **small), tmp_path)


class LookingPolicy:
    """Keeps every image it is shown; returns chunks of two actions, so it looks every 2 steps."""

    name = "looking"

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def reset(self, instruction):
        self.seen.clear()

    def act(self, obs):
        image, _ = check_observation(obs)
        self.seen.append(image.copy())
        return np.tile(np.array([0.8, -0.6, 0, 0, 0, 0, 1], np.float32), (2, 1))


def test_frames_are_decoded_only_when_read_and_equal_the_vector_envs(
    tiny_bundle, blob_render, decode_calls
):
    from benchmarks.worlds import MODEL_SALT, WorldModelWorld, episode_seed

    suite = wm_suite(tiny_bundle, conditions=[{"name": "clean"}], seeds=[0, 1], episode_length=5)
    starts = {
        ("lift", seed): {"frame": blob_render(xy), "instruction": "lift the red cube"}
        for seed, xy in ((0, (12.0, 14.0)), (1, (20.0, 18.0)))
    }
    world = WorldModelWorld(suite, starts)
    keys = [k for k in suite.episode_keys() if k.policy == "random"]
    decoded = decode_calls  # frames per WorldModel.decode call
    lookers = [LookingPolicy(), LookingPolicy()]
    results = world.run(keys, lookers)
    assert decoded == [2, 2]  # steps 2 and 4, both episodes in one call (step 0: the start)
    assert [r.frames.decoded for r in results] == [3, 3]

    # the vector env, stepped with the same seeds, starts and actions, shows the same frames
    n = world.batch_size
    frames = np.stack([world.start_frames(k)[0] for k in keys] * (n // 2))
    seeds = [episode_seed(suite, k, MODEL_SALT) for k in keys] + [0] * (n - 2)
    obs, _ = world.env.reset(
        seed=seeds, options={"frames": frames, "instruction": ["lift the red cube"] * n}
    )
    video = [obs["image"][:2]]
    for t in range(5):
        actions = np.zeros((n, 7), np.float32)
        actions[:2] = [r.actions[t] for r in results]
        obs, *_ = world.env.step(actions)
        video.append(obs["image"][:2])
    video = np.stack(video, axis=1)  # (2, 6, H, W, 3)
    for i, result in enumerate(results):
        assert max_abs_diff(np.asarray(result.frames), video[i]) <= 1  # decodes the other 3
        assert len(lookers[i].seen) == 3 and np.array_equal(lookers[i].seen[1], result.frames[2])
    assert not np.array_equal(video[0, 1], video[0, 0])  # the frames do move

    decoded.clear()  # a blind policy: nothing is decoded until read; the judge reads a few
    from policies.simple import ZeroPolicy

    blind = world.run(keys, [ZeroPolicy(), ZeroPolicy()])
    assert decoded == [] and blind[0].frames.decoded == 1
    assert blind[0].frames[[0, -1]].shape == (2, *video.shape[2:]) and decoded == [1]


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_same_suite_same_results(tiny_bundle, tmp_path, stand_in_judge, sim_available):
    suite = wm_suite(tiny_bundle, conditions=[{"name": "clean"}], seeds=[0, 1])
    a = run_suite(suite, tmp_path / "a", RunOptions(progress=False))
    b = run_suite(suite, tmp_path / "b", RunOptions(progress=False))

    def strip(rows):  # timings differ between runs
        return [{k: v for k, v in r.items() if k not in ("seconds", "ms_per_step")} for r in rows]

    assert strip(a.rows) == strip(b.rows)
    key = suite.episode_keys()[0]
    with (
        np.load(episode_file(tmp_path / "a", key)) as x,
        np.load(episode_file(tmp_path / "b", key)) as y,
    ):
        assert np.array_equal(x["frames"], y["frames"])


def test_a_policy_that_goes_down_gives_error_rows_not_failures(
    tiny_bundle, tmp_path, stand_in_judge, monkeypatch, sim_available
):
    import policies.registry

    original = policies.registry.load_policy
    monkeypatch.setattr(
        policies.registry,
        "load_policy",
        lambda spec, **o: FailingPolicy() if spec == "flaky" else original(spec, **o),
    )
    from wm_env.errors import WmGymError

    broken = [
        {"name": "broken", "spec": "no-such-policy"},
        {"name": "mistyped", "spec": "random", "options": {"sede": 0}},
    ]
    suite = wm_suite(
        tiny_bundle,
        conditions=[{"name": "clean"}],
        policies=[{"name": "flaky", "spec": "flaky"}, {"name": "zero", "spec": "zero"}, *broken],
    )
    # policies that cannot be built stop the run before any episode, naming each
    with pytest.raises(WmGymError, match="2 policies") as error:
        run_suite(suite, tmp_path, RunOptions(progress=False))
    assert "broken: UnknownNameError" in str(error.value) and "sede" in str(error.value)
    assert (
        not (tmp_path / "episodes.jsonl").exists()
        or not EpisodeLog(tmp_path / "episodes.jsonl").rows
    )
    suite = wm_suite(
        tiny_bundle,
        conditions=[{"name": "clean"}],
        policies=[{"name": "flaky", "spec": "flaky"}, {"name": "zero", "spec": "zero"}],
    )
    log = run_suite(suite, tmp_path, RunOptions(progress=False))
    by_policy = {}
    for row in log.rows:
        by_policy.setdefault(row["policy"], []).append(row)
    assert all("is down" in r["error"] and r["success"] is None for r in by_policy["flaky"])
    assert all(r["error"] is None and r["success"] is not None for r in by_policy["zero"])
    # errored episodes are kept (not re-run) unless asked
    assert EpisodeLog(tmp_path / "episodes.jsonl").missing(suite.episode_keys()) == []
    from benchmarks.leaderboard import load_rows, policy_table

    table = policy_table(load_rows(log.rows)).set_index("policy")
    assert table.loc["flaky", "episodes"] == 0 and table.loc["flaky", "errors"] == 3


def test_sim_world_uses_the_oracle_and_real_distractors(tmp_path, sim_available):
    suite = suite_from_dict({
        "name": "s", "world": {"type": "sim"}, "tasks": ["lift"], "seeds": [1],
        "episode_length": 40,
        "policies": [{"name": "expert", "spec": "expert", "options": {"quality": 1.0}},
                     {"name": "zero", "spec": "zero"}],
        "conditions": [{"name": "clean"}, {"name": "distract", "type": "distractors", "count": 2}],
    })  # fmt: skip
    log = run_suite(suite, tmp_path, RunOptions(progress=False))
    rows = {(r["policy"], r["condition"]): r for r in log.rows}
    assert (
        rows[("expert", "clean")]["success"] is True
        and rows[("expert", "clean")]["judge"] == "oracle"
    )
    assert rows[("zero", "clean")]["success"] is False
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["world"] == "sim" and run["bundle_sha256"] == ""
    with np.load(episode_file(tmp_path, suite.episode_keys()[0])) as clean:
        frames = clean["frames"]
    key = next(k for k in suite.episode_keys() if k.condition == "distract" and k.policy == "zero")
    with np.load(episode_file(tmp_path, key)) as edited:
        # the same layout with two real objects added: the start frames differ
        assert np.abs(edited["frames"][0].astype(int) - frames[0].astype(int)).max() > 30


def _sim_suite():
    return suite_from_dict({
        "name": "par", "world": {"type": "sim"}, "tasks": ["lift", "push"], "seeds": [0],
        "episode_length": 3,
        "policies": [{"name": "random", "spec": "random"}, {"name": "zero", "spec": "zero"}],
    })  # fmt: skip


def _comparable(log):
    keep = ("policy", "task", "condition", "seed", "index", "instruction", "success", "steps")
    return sorted(tuple(r[k] for k in keep) for r in log.rows)


@pytest.mark.slow
def test_worker_processes_and_ray_give_the_same_rows_as_in_process(tmp_path, sim_available):
    suite = _sim_suite()
    here = run_suite(suite, tmp_path / "here", RunOptions(progress=False))
    pool = run_suite(suite, tmp_path / "pool", RunOptions(workers=2, progress=False))
    assert _comparable(pool) == _comparable(here) and len(here) == 4
    key = suite.episode_keys()[0]
    with (
        np.load(episode_file(tmp_path / "here", key)) as a,
        np.load(episode_file(tmp_path / "pool", key)) as b,
    ):
        assert np.array_equal(a["actions"], b["actions"])  # per-episode seeded policies
    ray = pytest.importorskip("ray")  # the `ray` extra
    try:
        on_ray = run_suite(
            suite, tmp_path / "ray", RunOptions(ray_address="local", workers=2, progress=False)
        )
    finally:
        ray.shutdown()
    assert _comparable(on_ray) == _comparable(here)


def test_a_worker_whose_parent_died_runs_nothing(monkeypatch):
    import multiprocessing

    from benchmarks import runner

    class DeadParent:
        def is_alive(self) -> bool:
            return False

    started = []
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: DeadParent())
    monkeypatch.setattr(runner, "_worker_runner", lambda *args: started.append(args))
    with pytest.raises(SystemExit, match="gone"):
        runner._run_chunk_in_worker({}, "out", [], 1)
    assert started == []


def test_a_retrained_bundle_is_not_resumed_into_the_same_log(
    tiny_bundle, tmp_path, stand_in_judge, sim_available
):
    import shutil

    from wm_env.bundle import read_config, update_config

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    suite = wm_suite(bundle, seeds=[0], episode_length=1, conditions=[{"name": "clean"}])
    out = tmp_path / "run"
    assert len(run_suite(suite, out, RunOptions(progress=False))) == 2
    update_config(bundle, dynamics={**read_config(bundle)["dynamics"], "temperature": 0.25})
    with pytest.raises(ValueError, match="another version of"):
        run_suite(suite, out, RunOptions(progress=False))


def test_cem_plans_in_the_suites_bundle_which_then_pins_sim_results(tmp_path, monkeypatch):
    import policies.registry
    from benchmarks.runner import build_policy_factory, bundle_fingerprint, results_bundle
    from benchmarks.suite import EpisodeKey

    (tmp_path / "config.json").write_text("{}")
    cem = {"name": "cem", "spec": "cem", "options": {"goal": "expert"}}
    sim = {"type": "sim", "bundle": str(tmp_path)}
    with_cem = wm_suite(tmp_path, world=sim, policies=[cem])
    without = wm_suite(tmp_path, world=sim, policies=[{"name": "random", "spec": "random"}])
    own_model = wm_suite(tmp_path, world=sim, policies=[{**cem, "options": {"model": "m"}}])
    assert results_bundle(with_cem) == str(tmp_path)
    assert results_bundle(without) is None and results_bundle(own_model) is None
    assert bundle_fingerprint(without) == "" and len(bundle_fingerprint(with_cem)) == 64

    loaded = []

    class Stub:
        name = "cem"

    def fake_load(spec, **options):
        loaded.append((spec, options))
        return Stub()

    monkeypatch.setattr(policies.registry, "load_policy", fake_load)
    build_policy_factory(with_cem)(EpisodeKey("cem", "lift", "clean", 0, 0))
    build_policy_factory(own_model)(EpisodeKey("cem", "lift", "clean", 0, 0))
    assert loaded == [
        ("cem", {"goal": "expert", "model": str(tmp_path)}),
        ("cem", {"model": "m"}),
    ]


def test_a_mistyped_editor_stops_the_run_before_any_episode(tiny_bundle, tmp_path, stand_in_judge):
    from wm_env.errors import UnknownNameError

    suite = wm_suite(
        tiny_bundle,
        conditions=[{"name": "clean"}, {"name": "d", "type": "distractors", "editor": "pastee"}],
    )
    with pytest.raises(UnknownNameError, match="did you mean 'paste'"):
        run_suite(suite, tmp_path, RunOptions(progress=False))
    log = tmp_path / "episodes.jsonl"
    assert not log.exists() or not EpisodeLog(log).rows  # not even the clean condition ran


def test_cached_starts_hold_the_robot_state_and_a_changed_png_is_refused(tmp_path, sim_available):
    import imageio.v3 as iio

    from benchmarks.worlds import render_starts
    from wm_env.errors import CorruptFileError

    first = render_starts(["lift"], [3], 64, tmp_path)[("lift", 3)]
    assert first["state"].shape == (8,) and first["frame"].shape == (64, 64, 3)
    again = render_starts(["lift"], [3], 64, tmp_path)[("lift", 3)]  # from the cache
    np.testing.assert_array_equal(again["frame"], first["frame"])
    np.testing.assert_allclose(again["state"], first["state"])
    iio.imwrite(tmp_path / "lift-3.png", 255 - first["frame"])  # overwritten by something else
    with pytest.raises(CorruptFileError, match="lift-3.png.*changed"):
        render_starts(["lift"], [3], 64, tmp_path)


def test_leaderboard_csv_has_the_calibrated_success_columns(tmp_path, sim_available):
    import pandas as pd
    import yaml

    from benchmarks.bench import LeaderboardConfig, run_leaderboard

    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump({
        "name": "s", "world": {"type": "sim"}, "tasks": ["lift"], "seeds": [1],
        "episode_length": 3, "policies": [{"name": "zero", "spec": "zero"}],
        "conditions": [{"name": "clean"}],
    }))  # fmt: skip
    paths = run_leaderboard(LeaderboardConfig(suite=suite_file, out=tmp_path / "lb"))
    table = pd.read_csv(paths["leaderboard"])
    assert table.loc[0, "success_calibrated"] == table.loc[0, "success"]  # the oracle is exact
    assert table.loc[0, "calibration"].startswith("oracle")
