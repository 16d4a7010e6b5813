"""Packed latents (train/packed.py) and the GPU training kit (scripts/train_on_gpu.sh), on CPU.

Built on the tiny moving-blob bundle and dataset of conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from train.loop import OptimConfig
from train.packed import PackConfig, pack_latents, read_packed, store_in_bf16
from train.stage_dynamics import DynamicsStageConfig, run_dynamics_stage
from wm_env.bundle import read_config
from wm_env.dataset.split import DataConfig
from wm_env.errors import CorruptFileError
from wm_env.world_model import WorldModel

REPO = Path(__file__).resolve().parents[1]


def tiny_dynamics(bundle, blob_dataset, run_dir, **overrides) -> DynamicsStageConfig:
    kwargs = dict(
        bundle=bundle, data=DataConfig(dataset=blob_dataset), preset=None, hidden=16, depth=1,
        heads=2, patch_size=2, mean_head_width=8, mean_head_depth=1, val_every=10,
        keep_best=True, run_dir=run_dir,
        optim=OptimConfig(steps=12, batch_size=4, lr=1e-3, warmup_steps=1, ema_decay=0.0, log_every=1),
    )  # fmt: skip
    kwargs.update(overrides)
    return DynamicsStageConfig(**kwargs)


@pytest.fixture
def bundles(tiny_bundle, tmp_path):
    return [shutil.copytree(tiny_bundle, tmp_path / name) for name in ("a", "b")]


@pytest.mark.parametrize("state", [False, True])
def test_training_from_packed_fp32_latents_equals_training_from_the_dataset(
    tiny_bundle, bundles, blob_dataset, tmp_path, state
):
    packed = pack_latents(
        PackConfig(bundle=bundles[0], data=DataConfig(dataset=blob_dataset), dtype="fp32",
                   out=tmp_path / "p.safetensors", run_dir=tmp_path / "cache"),
        progress=False,
    )  # fmt: skip
    data = read_packed(packed, _space(bundles[0]))
    assert data.val is not None and data.train_latents.dtype == torch.float32
    assert data.train_latents.shape[0] == int(data.train["lengths"].sum())
    assert data.train["states"].shape == (data.train_latents.shape[0], 2)  # the blob's position
    # both runs start from the same weights (building the encoder draws from torch's global
    # generator, so fresh initial weights would differ) and draw nothing else from it
    same_start = dict(
        init_from=tiny_bundle, hidden=64, heads=4, patch_size=1, mean_head_width=16,
        action_dropout=0.0, state=state,
    )  # fmt: skip
    run_dynamics_stage(
        tiny_dynamics(bundles[0], blob_dataset, tmp_path / "r1", **same_start), progress=False
    )
    run_dynamics_stage(
        tiny_dynamics(bundles[1], blob_dataset, tmp_path / "r2", packed=packed, **same_start),
        progress=False,
    )
    a, b = (load_file(str(bundle / "dynamics.safetensors")) for bundle in bundles)
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(str(tiny_bundle / "dynamics.safetensors"))
    assert not all(torch.equal(a[k], start[k]) for k in a)  # and it did train
    sections = [read_config(bundle)["dynamics"] for bundle in bundles]
    keys = ("latent_mean", "latent_std", "delta_std", "dataset", "selected")
    for key in keys + (("state_mean", "state_std", "state_delta_std") if state else ()):
        assert sections[0][key] == sections[1][key], key
    assert read_config(bundles[0])["actions"] == read_config(bundles[1])["actions"]


def _space(bundle) -> str:
    from train.packed import latent_space_key

    return latent_space_key(read_config(bundle))


def test_fp16_packing_halves_the_file_and_bad_packs_are_refused(bundles, blob_dataset, tmp_path):
    def pack(dtype):
        return pack_latents(
            PackConfig(bundle=bundles[0], data=DataConfig(dataset=blob_dataset), dtype=dtype,
                       out=tmp_path / f"{dtype}.safetensors", run_dir=tmp_path / "cache"),
            progress=False,
        )  # fmt: skip

    full, half = pack("fp32"), pack("fp16")
    latents = {
        name: read_packed(path, _space(bundles[0])).train_latents
        for name, path in (("fp32", full), ("fp16", half))
    }
    assert torch.allclose(latents["fp32"], latents["fp16"], atol=1e-2, rtol=1e-2)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    with pytest.raises(ValueError, match="another latent space"):
        read_packed(half, "some other encoder")
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(half.read_bytes()[:200])
    with pytest.raises(CorruptFileError):
        read_packed(torn, _space(bundles[0]))
    with pytest.raises(FileNotFoundError, match="wmgym train pack"):
        read_packed(tmp_path / "missing.safetensors", _space(bundles[0]))
    with pytest.raises(ValueError, match="dtype"):
        PackConfig(dtype="int4")


def test_bf16_stored_weights_load_and_roll_out_like_fp32(tiny_bundle, tmp_path, blob_render):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bf16")
    before = (bundle / "dynamics.safetensors").stat().st_size
    store_in_bf16(bundle)
    assert (bundle / "dynamics.safetensors").stat().st_size < 0.6 * before
    assert read_config(bundle)["dynamics"]["stored_dtype"] == "bf16"
    starts = np.stack([blob_render((12.0, 14.0)), blob_render((20.0, 18.0))])
    actions = np.zeros((2, 7), np.float32)
    actions[:, 0] = 0.5
    frames = []
    for path in (tiny_bundle, bundle):
        model = WorldModel.from_pretrained(path, temperature=0.0)
        model.reset(starts, seed=0)
        frames.append(np.stack([model.step(actions) for _ in range(3)]))
        assert next(model.dit.parameters()).dtype == torch.float32
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).mean() < 3


def test_gpu_kit_runs_on_cpu_from_packed_latents_without_pandas_or_diffusers(
    tiny_bundle, blob_dataset, tmp_path
):
    """`scripts/train_on_gpu.sh run` on a tiny config: the CPU path of what runs on the GPU."""
    kit = tmp_path / "kit"
    shutil.copytree(tiny_bundle, kit / "bundle")
    config = json.loads((kit / "bundle" / "config.json").read_text())
    config.pop("dynamics")
    config["files"].pop("dynamics.safetensors")
    (kit / "bundle" / "config.json").write_text(json.dumps(config))
    (kit / "bundle" / "dynamics.safetensors").unlink()
    pack_latents(
        PackConfig(bundle=tiny_bundle, data=DataConfig(dataset=blob_dataset),
                   out=kit / "latents.safetensors", run_dir=tmp_path / "cache"),
        progress=False,
    )  # fmt: skip
    # a Python whose pandas, pyarrow and diffusers cannot be imported, as on the device
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for name in ("pandas", "pyarrow", "diffusers"):  # shadow them with packages that fail
        (blocker / name).mkdir()
        (blocker / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not on the device')\n"
        )
    out = tmp_path / "out"
    env = {
        **os.environ,
        "KIT": str(kit), "OUT": str(out), "STEPS": "3", "BATCH": "4", "SECONDS_BUDGET": "60",
        "PYTHON": sys.executable, "PYTHONPATH": str(blocker),
        "DYNAMICS_ARGS": "--hidden 16 --depth 1 --heads 2 --patch-size 2 --num-steps 2 "
        "--mean-head-width 8 --mean-head-depth 1",
    }  # fmt: skip
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "train_on_gpu.sh"), "run"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    section = read_config(out / "bundle")["dynamics"]
    assert section["steps"] == 3 and section["stored_dtype"] == "bf16"
    assert section["selected"]["by"] == "val_loss"
    model = WorldModel.from_pretrained(out / "bundle")
    model.reset(np.zeros((1, 32, 32, 3), np.uint8), seed=0)
    assert model.step(np.zeros((1, 7), np.float32)).shape == (1, 32, 32, 3)
    # run again (as after an interrupted session): it resumes the finished checkpoint, no retraining
    weights = (out / "bundle" / "dynamics.safetensors").read_bytes()
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "train_on_gpu.sh"), "run"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "bundle" / "dynamics.safetensors").read_bytes() == weights
