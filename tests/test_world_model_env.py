"""The world-model Gymnasium envs: wm_env/WorldModel-v0, its vector env, starts, wrappers."""

from __future__ import annotations

import json

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import wm_env
from wm_env.bundle import BundleError
from wm_env.envs.starts import StartSet
from wm_env.envs.world_model_env import Timing
from wm_env.errors import CorruptFileError, WmGymError
from wm_env.spaces import observation_space

ENV_ID = wm_env.WORLD_MODEL_ENV_ID


@pytest.fixture(scope="module")
def model(tiny_bundle):
    from wm_env.world_model import WorldModel

    return WorldModel.from_pretrained(tiny_bundle)


def make(model, blob_dataset, **kwargs):
    return gym.make(ENV_ID, model=model, starts=blob_dataset, **kwargs)


def test_check_env_and_spaces(model, blob_dataset):
    """Gymnasium's checker passes; the spaces are the shared ones, action bounds from the bundle."""
    env = make(model, blob_dataset, render_mode="rgb_array")
    check_env(env.unwrapped)
    assert env.observation_space == observation_space(32, 32)
    stats = model.config["actions"]
    np.testing.assert_allclose(env.action_space.low, np.asarray(stats["low"], np.float32))
    np.testing.assert_allclose(env.action_space.high, np.asarray(stats["high"], np.float32))
    assert env.spec.max_episode_steps == 40


def test_reset_is_seeded_and_options_choose_the_start(model, blob_dataset):
    env = make(model, blob_dataset)
    a, info_a = env.reset(seed=3)
    b, info_b = env.reset(seed=3)
    assert info_a == info_b and np.array_equal(a["image"], b["image"])
    starts = StartSet.load(blob_dataset)
    obs, info = env.reset(options={"episode": 4})
    assert (
        np.array_equal(obs["image"], starts[4].frames[-1])
        and info["start_id"] == starts[4].start_id
    )
    given = np.full((32, 32, 3), 90, np.uint8)
    obs, info = env.reset(options={"frames": given, "instruction": "move the blob left"})
    assert np.array_equal(obs["image"], given) and obs["instruction"] == "move the blob left"
    with pytest.raises(ValueError, match="instruction"):
        env.reset(options={"frames": given})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"episodes": 1})


def test_same_seed_same_rollout(model, blob_dataset):
    env = make(model, blob_dataset)
    actions = np.random.default_rng(0).uniform(-1, 1, (4, 7)).astype(np.float32)

    def rollout(seed):
        env.reset(seed=seed)
        return [env.step(a)[0]["image"] for a in actions]

    first, again, other = rollout(5), rollout(5), rollout(6)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(first, other, strict=True))


def test_step_info_and_bad_actions(model, blob_dataset):
    env = make(model, blob_dataset)
    with pytest.raises(RuntimeError, match="reset"):
        env.unwrapped.step(np.zeros(7, np.float32))
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["latent"].shape == model.latent_shape
    assert isinstance(info["generation_seconds"], Timing) and float(info["generation_seconds"]) > 0
    assert info["denoising_steps"] == model.num_steps and info["action_clipped"] is False
    _, _, _, _, info = env.step(np.full(7, 5.0, np.float32))
    assert info["action_clipped"] is True
    with pytest.raises(ValueError, match=r"\(6,\)"):
        env.step(np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(7, np.nan, np.float32))


def test_time_limit_and_record_video(model, blob_dataset, tmp_path):
    pytest.importorskip("moviepy")
    env = gym.wrappers.RecordVideo(
        make(model, blob_dataset, render_mode="rgb_array", max_episode_steps=3),
        str(tmp_path),
        episode_trigger=lambda e: True,
    )
    env.reset(seed=0)
    truncated = [env.step(np.zeros(7, np.float32))[3] for _ in range(3)]
    env.close()
    assert truncated == [False, False, True]
    videos = list(tmp_path.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0


def test_missing_model_or_starts_give_clear_errors(tiny_bundle, blob_dataset, tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        gym.make(ENV_ID, model=tmp_path / "nope", starts=blob_dataset)
    with pytest.raises(WmGymError, match="do not exist"):
        gym.make(ENV_ID, model=tiny_bundle, starts=tmp_path / "nothing")


def test_dataset_starts_are_decoded_lazily_one_frame_each(blob_dataset, monkeypatch, tmp_path):
    """Loading reads no video; indexing a start decodes only its first frame, once."""
    import shutil

    from wm_env.dataset import lerobot
    from wm_env.dataset.lerobot import LeRobotDataset

    decoded = []
    real_decode = lerobot.decode_video

    def counting_decode(path, expected_frames=None, **kwargs):
        decoded.append(expected_frames)
        return real_decode(path, expected_frames=expected_frames, **kwargs)

    monkeypatch.setattr(lerobot, "decode_video", counting_decode)
    starts = StartSet.load(blob_dataset)
    assert len(starts) == 6 and decoded == []
    start = starts[2]
    assert decoded == [1] and starts[2] is start
    dataset = LeRobotDataset(blob_dataset)
    assert np.array_equal(start.frames, dataset.frames(2)[:1])
    assert start.instruction == "move the blob" and start.meta["episode"] == 2

    broken = tmp_path / "broken"
    shutil.copytree(blob_dataset, broken)
    next(broken.glob("videos/**/*.mp4")).unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        StartSet.load(broken)


def test_png_json_start_folder(tmp_path, blob_render):
    iio.imwrite(tmp_path / "a.png", blob_render((10, 10)))
    (tmp_path / "a.json").write_text(json.dumps({"instruction": "move the blob right"}))
    starts = StartSet.load(tmp_path)
    assert (
        len(starts) == 1
        and starts[0].instruction == "move the blob right"
        and starts[0].frames.shape == (1, 32, 32, 3)
    )
    iio.imwrite(tmp_path / "b.png", blob_render((20, 20)))
    with pytest.raises(CorruptFileError, match="b.json"):
        StartSet.load(tmp_path)


# ---------------------------------------------------------------------- vector env
def test_vector_env_matches_single_envs_with_autoreset(model, blob_dataset):
    """Sub-env i seeded seed+i gives the single env's frames (within one grey level of float
    rounding between batch compositions), including the next-step autoreset."""
    n, limit = 3, 3
    venv = gym.make_vec(
        ENV_ID,
        num_envs=n,
        vectorization_mode="vector_entry_point",
        model=model,
        starts=blob_dataset,
        max_episode_steps=limit,
    )
    assert isinstance(venv.unwrapped, gym.vector.VectorEnv)
    actions = np.random.default_rng(1).uniform(-1, 1, (5, n, 7)).astype(np.float32)
    obs, _ = venv.reset(seed=20)
    vector, truncs = [obs["image"]], []
    for t in range(5):
        obs, rewards, terminated, truncated, _ = venv.step(actions[t])
        vector.append(obs["image"])
        truncs.append(truncated)
        assert obs["image"].shape == (n, 32, 32, 3) and len(obs["instruction"]) == n
    assert [list(t) for t in np.array(truncs).T] == [[False, False, True, False, False]] * n
    from wm_env.world_model import WorldModel

    for i in range(n):
        env = make(WorldModel.from_pretrained(model.bundle), blob_dataset, max_episode_steps=limit)
        frames = [env.reset(seed=20 + i)[0]["image"]]
        for t in range(5):
            if t == limit:  # the vector env autoresets on this step, ignoring the action
                frames.append(env.reset()[0]["image"])
            else:
                frames.append(env.step(actions[t, i])[0]["image"])
        diff = max(
            np.abs(f.astype(int) - v[i].astype(int)).max()
            for f, v in zip(frames, vector, strict=True)
        )
        assert diff <= 1, (i, diff)


def test_settings_that_a_loaded_model_would_ignore_are_refused(model, blob_dataset):
    with pytest.raises(ValueError, match=r"dtype='bf16' cannot change a loaded WorldModel"):
        make(model, blob_dataset, dtype="bf16")
    with pytest.raises(ValueError, match=r"num_steps=2, use_cache=False"):
        gym.make_vec(
            ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", model=model,
            starts=blob_dataset, num_steps=2, use_cache=False,
        )  # fmt: skip


def test_vector_env_makes_one_model_call_per_step(model, blob_dataset, monkeypatch):
    venv = gym.make_vec(
        ENV_ID,
        num_envs=4,
        vectorization_mode="vector_entry_point",
        model=model,
        starts=blob_dataset,
    )
    venv.reset(seed=0)
    calls = []
    original = model.step
    monkeypatch.setattr(
        model, "step", lambda actions: calls.append(actions.shape) or original(actions)
    )
    venv.step(np.zeros((4, 7), np.float32))
    assert calls == [(4, 7)]
    with pytest.raises(ValueError, match=r"received shape \(3, 7\)"):
        venv.step(np.zeros((3, 7), np.float32))


# ---------------------------------------------------------------------- wrappers on the real env
def test_distractor_wrapper_edits_the_start_the_model_sees(model, blob_dataset):
    from wm_env.wrappers import DistractorWrapper

    plain = make(model, blob_dataset)
    wrapped = DistractorWrapper(make(model, blob_dataset), "paste")
    clean, _ = plain.reset(seed=2)
    edited, info = wrapped.reset(seed=2)
    assert info["edit"]["boxes"] and not np.array_equal(clean["image"], edited["image"])
    x0, y0, x1, y1 = info["edit"]["boxes"][0]
    outside = np.ones((32, 32), bool)
    outside[max(0, y0 - 4) : y1 + 4, max(0, x0 - 4) : x1 + 4] = False
    assert np.abs(clean["image"].astype(int) - edited["image"].astype(int))[outside].max() <= 2
    encoded = model.latest_latents  # what the model encoded is the edited frame
    model.reset(clean["image"][None], seed=[0])
    assert not torch.allclose(encoded, model.latest_latents)


# ---------------------------------------------------------------------- judge wrapper
class StepCountJudge:
    """Says success once the episode has at least ``needed`` frames; abstains when told to."""

    name = "step-count"

    def __init__(self, needed: int, abstain: bool = False) -> None:
        self.needed, self.abstain, self.calls = needed, abstain, []

    def judge(self, frames, instruction):
        from judges.base import Verdict, check_judge_input

        frames = check_judge_input(frames, instruction)
        self.calls.append(len(frames))
        if self.abstain:
            return Verdict(None, 0.5, "endpoint down")
        ok = len(frames) >= self.needed
        return Verdict(ok, float(ok), f"{len(frames)} frames")


def test_judge_wrapper_rewards_at_the_end_or_every_n_steps(model, blob_dataset):
    from wm_env.wrappers import JudgeWrapper

    judge = StepCountJudge(needed=3)
    env = JudgeWrapper(make(model, blob_dataset, max_episode_steps=4), judge)
    env.reset(seed=0)
    results = [env.step(np.zeros(7, np.float32)) for _ in range(4)]
    assert judge.calls == [5]  # once, at the time limit, on all 5 frames
    assert [r[1] for r in results] == [0.0, 0.0, 0.0, 1.0] and results[-1][4]["verdict"].success

    judge = StepCountJudge(needed=3)
    env = JudgeWrapper(make(model, blob_dataset, max_episode_steps=10), judge, every=2)
    env.reset(seed=0)
    steps = [env.step(np.zeros(7, np.float32)) for _ in range(2)]
    assert judge.calls == [3] and steps[-1][2] is True and steps[-1][1] == 1.0  # success ends it

    abstaining = JudgeWrapper(
        make(model, blob_dataset, max_episode_steps=1), StepCountJudge(1, abstain=True)
    )
    abstaining.reset(seed=0)
    _, reward, terminated, _, info = abstaining.step(np.zeros(7, np.float32))
    assert info["verdict"].success is None and reward == 0.0 and terminated is False
    with pytest.raises(ValueError, match="every"):
        JudgeWrapper(make(model, blob_dataset), judge, every=0)


def test_judge_input_validation():
    from judges.base import Verdict, check_judge_input

    with pytest.raises(ValueError, match="uint8"):
        check_judge_input(np.zeros((2, 8, 8, 3), np.float32), "lift the red cube")
    with pytest.raises(ValueError, match="T >= 1"):
        check_judge_input(np.zeros((0, 8, 8, 3), np.uint8), "lift the red cube")
    with pytest.raises(ValueError, match="instruction"):
        check_judge_input(np.zeros((2, 8, 8, 3), np.uint8), "  ")
    with pytest.raises(ValueError, match="score"):
        Verdict(True, 1.5)


def test_bundle_with_a_retrained_encoder_is_refused(tiny_bundle, tmp_path):
    """The dynamics model records which encoder weights it was trained on; a bundle whose
    encoder changed afterwards is refused at load instead of producing silently wrong frames."""
    import shutil

    from safetensors.torch import load_file

    from wm_env.bundle import write_component
    from wm_env.world_model import WorldModel

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    config = json.loads((bundle / "config.json").read_text())
    state = load_file(str(bundle / "encoder.safetensors"))
    first = next(iter(state))
    state[first] = state[first] + 0.01
    write_component(bundle, "encoder", config["encoder"], state)
    with pytest.raises(BundleError, match="retrain"):
        WorldModel.from_pretrained(bundle)
