"""One options object for running a world model, and one dtype vocabulary (wm_env/options.py)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import wm_env  # noqa: F401  (registers the envs)
from wm_env.errors import UnknownNameError
from wm_env.options import WorldModelOptions, dtype_name, torch_dtype
from wm_env.world_model import WorldModel


def test_dtype_names_are_one_vocabulary_with_torchs_spellings():
    assert dtype_name("bfloat16") == dtype_name("BF16") == "bf16"
    assert dtype_name("float32") == dtype_name("fp32") == "fp32"
    assert dtype_name("half") == "fp16" and dtype_name(None) is None
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype("torch.float16") is torch.float16
    with pytest.raises(UnknownNameError, match="bf16"):
        dtype_name("bf61")
    with pytest.raises(UnknownNameError):
        dtype_name("fp64", allowed=("fp32", "bf16"))


def test_options_validate_and_build_from_names_or_dicts():
    assert WorldModelOptions(dtype="bfloat16").dtype == "bf16"
    for bad in ({"num_steps": 0}, {"num_steps": 2.5}, {"temperature": float("nan")},
                {"temperature": -1.0}, {"decoder": 3}):  # fmt: skip
        with pytest.raises(ValueError):
            WorldModelOptions(**bad)
    base = WorldModelOptions(num_steps=2, dtype="bf16")
    built = WorldModelOptions.build(base, temperature=0.0, num_steps=None)
    assert (built.num_steps, built.temperature, built.dtype) == (2, 0.0, "bf16")  # None keeps
    assert WorldModelOptions.build({"num_steps": 3}, decoder="light").non_defaults() == {
        "num_steps": 3, "decoder": "light"}  # fmt: skip
    with pytest.raises(UnknownNameError, match="num_steps"):
        WorldModelOptions.build(num_step=3)


def test_from_pretrained_and_both_envs_take_the_options(tiny_bundle, blob_render):
    options = WorldModelOptions(num_steps=1, temperature=0.0)
    model = WorldModel.from_pretrained(tiny_bundle, options)
    assert (model.num_steps, model.temperature) == (1, 0.0)
    assert WorldModel.from_pretrained(tiny_bundle, options, num_steps=3).num_steps == 3
    starts = [blob_render((16.0, 16.0))]
    env = gym.make("wm_env/WorldModel-v0", model=tiny_bundle, starts=starts, options=options)
    assert env.unwrapped.model.num_steps == 1
    env = gym.make("wm_env/WorldModel-v0", model=tiny_bundle, starts=starts, num_steps=2)
    assert env.unwrapped.model.num_steps == 2  # the fields by name, as before
    with pytest.raises(UnknownNameError, match="num_steps"):
        gym.make("wm_env/WorldModel-v0", model=tiny_bundle, starts=starts, num_stpes=2)
    venv = gym.make_vec("wm_env/WorldModel-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        model=tiny_bundle, starts=starts, options={"temperature": 0.0})  # fmt: skip
    obs, _ = venv.reset(seed=0)
    first, *_ = venv.step(np.zeros((2, 7), np.float32))
    venv.reset(seed=0)
    second, *_ = venv.step(np.zeros((2, 7), np.float32))
    np.testing.assert_array_equal(first["image"], second["image"])  # temperature 0: deterministic
    # a loaded model cannot be re-optioned through an env
    with pytest.raises(ValueError, match="cannot change a loaded WorldModel"):
        gym.make("wm_env/WorldModel-v0", model=model, starts=starts, dtype="bf16")
