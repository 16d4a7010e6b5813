"""Issue 21's bad-input cases for bundles, the world-model runtime and envs, starts and the sim:
each gets a clear error of the project's own types (or a ValueError that says what is wrong)."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import wm_env
from wm_env.bundle import read_config, write_component
from wm_env.envs.starts import StartSet
from wm_env.errors import CorruptFileError
from wm_env.spaces import MAX_INSTRUCTION_LENGTH, checked_instruction
from wm_env.world_model import WorldModel


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


# ---------------------------------------------------------------------- bundles


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda config: [config], "must hold a JSON object"),
        (lambda config: {**config, "format_version": "1"}, "format_version must be an integer"),
    ],
)
def test_a_garbled_config_is_a_corrupt_file(bundle, edit, match):
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps(edit(config)))
    with pytest.raises(CorruptFileError, match=match) as error:
        read_config(bundle)
    assert "config.json" in str(error.value)


def test_a_bundle_with_nan_weights_is_refused_at_load(bundle):
    config = read_config(bundle)
    weights = load_file(bundle / config["dynamics"]["weights"])
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    section = {k: v for k, v in config["dynamics"].items() if k != "weights"}
    write_component(bundle, "dynamics", section, weights)  # listed with its new hash
    with pytest.raises(CorruptFileError, match="NaN or inf weights"):
        WorldModel.from_pretrained(bundle)


# ---------------------------------------------------------------------- runtime and envs


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"num_steps": 0}, "num_steps must be an integer >= 1"),
        ({"num_steps": -3}, "num_steps must be an integer >= 1"),
        ({"num_steps": 2.5}, "num_steps must be an integer >= 1"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"temperature": -5.0}, "temperature must be a finite number"),
    ],
)
def test_sampling_settings_are_checked_when_the_env_is_made(
    tiny_bundle, blob_dataset, settings, match
):
    with pytest.raises(ValueError, match=match):
        gym.make(wm_env.WORLD_MODEL_ENV_ID, model=tiny_bundle, starts=blob_dataset, **settings)


def test_nan_latents_raise_instead_of_black_frames(tiny_bundle, monkeypatch):
    model = WorldModel.from_pretrained(tiny_bundle)
    model.reset(np.zeros((2, 32, 32, 3), np.uint8), seed=0)
    model.step(np.zeros((2, 7), np.float32))  # a healthy step first
    original = model.dit.forward

    def broken(x, *args, **kwargs):
        out = original(x, *args, **kwargs)
        out[1] = float("nan")  # episode 1 of the batch goes bad
        return out

    monkeypatch.setattr(model.dit, "forward", broken)
    with pytest.raises(FloatingPointError, match=r"episodes \[1\].*step 2"):
        model.step(np.zeros((2, 7), np.float32))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"episode": 1.7}, "must be an integer index"),
        ({"episode": True}, "must be an integer index"),
        ({"instruction": 123}, "must be a string"),
        ({"instruction": "   "}, "must not be empty or blank"),
        ({"instruction": "x" * (MAX_INSTRUCTION_LENGTH + 1)}, "at most"),
        ({"instruction": "move the blob \u2192 left"}, "outside the instruction charset"),
    ],
)
def test_reset_options_that_would_leave_the_observation_space(
    tiny_bundle, blob_dataset, options, match
):
    env = gym.make(wm_env.WORLD_MODEL_ENV_ID, model=tiny_bundle, starts=blob_dataset)
    if "instruction" in options:
        options = {**options, "frames": np.zeros((32, 32, 3), np.uint8)}
    with pytest.raises(ValueError, match=match):
        env.reset(seed=0, options=options)
    obs, _ = env.reset(seed=0, options={"episode": np.int64(1)})  # numpy integers are fine
    assert env.observation_space.contains(obs)
    assert checked_instruction("put the red cube in the bin") == "put the red cube in the bin"


# ---------------------------------------------------------------------- start folders


def test_start_folders_grey_png_json_list_and_corrupt_png(tmp_path, blob_render):
    grey = tmp_path / "grey"
    grey.mkdir()
    iio.imwrite(grey / "a.png", blob_render((10, 10))[..., 0])  # (H, W): one grey channel
    (grey / "a.json").write_text(json.dumps({"instruction": "move", "state": [1.0, 2.0]}))
    start = StartSet.load(grey)[0]
    assert start.frames.shape == (1, 32, 32, 3) and start.frames.dtype == np.uint8
    np.testing.assert_array_equal(start.state, [1.0, 2.0])

    listed = tmp_path / "listed"
    listed.mkdir()
    iio.imwrite(listed / "a.png", blob_render((10, 10)))
    (listed / "a.json").write_text(json.dumps(["move"]))
    with pytest.raises(CorruptFileError, match="a.json.*JSON object"):
        StartSet.load(listed)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (corrupt / "a.json").write_text(json.dumps({"instruction": "move"}))
    with pytest.raises(CorruptFileError, match="a.png.*cannot read the image"):
        StartSet.load(corrupt)

    bad_state = tmp_path / "bad_state"
    bad_state.mkdir()
    iio.imwrite(bad_state / "a.png", blob_render((10, 10)))
    (bad_state / "a.json").write_text(json.dumps({"instruction": "move", "state": ["x"]}))
    with pytest.raises(CorruptFileError, match="state must be"):
        StartSet.load(bad_state)


# ---------------------------------------------------------------------- the sim


def test_sim_reset_options_get_clear_errors(sim_env_factory):
    env = sim_env_factory("lift").unwrapped
    with pytest.raises(ValueError, match="start state from env.start_state"):
        env.reset(options={"start": {"garbage": 1}})
    with pytest.raises(ValueError, match="start state from env.start_state"):
        env.reset(options={"start": [1, 2]})
    with pytest.raises(ValueError, match="is not an episode spec"):
        env.reset(options={"start": {"spec": {"family": "lift"}, "physics_state": []}})
    with pytest.raises(ValueError, match=r"num_distractors must be an integer in \[0, 0\]"):
        env.reset(options={"num_distractors": -1})
    obs, _ = env.reset(seed=0)  # still usable afterwards
    assert env.observation_space.contains(obs)
