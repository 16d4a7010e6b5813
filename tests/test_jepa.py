"""The JEPA encoder (issue 20's video-pretrained semantic space): masks, pairs, the loss, a
short pretraining run that lowers it, and a bundle built on the frozen result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.loop import OptimConfig, RuntimeConfig
from train.stage_jepa import (
    JEPAStageConfig,
    JEPATrainee,
    block_masks,
    frame_pairs,
    jepa_loss,
    run_jepa_stage,
)
from wm_env.dataset.split import DataConfig
from wm_env.model.jepa import JEPAConfig, JEPAEncoder

TINY = dict(image_size=32, patch_size=8, dim=32, depth=1, heads=2, predictor_dim=16,
            predictor_depth=1, max_offset=2)  # fmt: skip


def test_block_masks_hide_exactly_the_share_asked_as_one_block_first():
    rng = np.random.default_rng(0)
    kept, hidden = block_masks(rng, 8, grid=8, ratio=0.25)
    assert kept.shape == (8, 48) and hidden.shape == (8, 16)
    for k, h in zip(kept, hidden, strict=True):
        assert sorted(np.concatenate([k, h]).tolist()) == list(range(64))  # a partition
        rows, cols = np.divmod(h, 8)
        # a 4x4-ish block: the hidden tokens span a few rows and columns, not the whole grid
        assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) <= 32
    assert len({tuple(h) for h in hidden}) > 1  # random per sample


def test_frame_pairs_stay_inside_one_episode():
    rng = np.random.default_rng(0)
    starts, lengths = np.array([0, 5, 6]), np.array([5, 1, 10])  # the 1-frame episode is skipped
    now, later, offsets = frame_pairs(rng, starts, lengths, 500, max_offset=3)
    episode = np.searchsorted(starts, now, side="right") - 1
    assert (np.searchsorted(starts, later, side="right") - 1 == episode).all()
    assert (later < starts[episode] + lengths[episode]).all() and (episode != 1).all()
    assert set(offsets.tolist()) == {1, 2, 3} and (later - now == offsets).all()
    with pytest.raises(ValueError, match="at least 2 frames"):
        frame_pairs(rng, np.array([0]), np.array([1]), 4, 3)


def test_loss_is_finite_trains_the_online_model_only_and_targets_are_normalised():
    torch.manual_seed(0)
    model = JEPATrainee(JEPAConfig(**TINY))
    rng = np.random.default_rng(0)
    kept, hidden = (torch.from_numpy(a) for a in block_masks(rng, 3, 4, 0.5))
    now, later = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    loss, terms = jepa_loss(model, now, later, torch.tensor([1, 2, 1]), kept, hidden)
    with_hinge, more = jepa_loss(model, now, later, torch.tensor([1, 2, 1]), kept, hidden, 1.0)
    assert "variance_hinge" not in terms and 0 < more["variance_hinge"] <= 1
    assert with_hinge > loss  # a fresh encoder's features vary less than the hinge asks
    loss.backward()
    assert torch.isfinite(loss) and terms["target_spread"] > 0
    assert all(p.grad is None for p in model.target.parameters())
    assert model.online.backbone.patch.weight.grad.abs().sum() > 0
    before = model.target.patch.weight.clone()
    with torch.no_grad():
        model.online.backbone.patch.weight.add_(1.0)
    model.update_target(momentum=1.0)
    assert torch.equal(model.target.patch.weight, before)  # momentum 1: frozen
    model.update_target(momentum=0.0)
    assert torch.equal(model.target.patch.weight, model.online.backbone.patch.weight)


def test_pretraining_lowers_the_loss_and_writes_a_frozen_encoder(blob_dataset, tmp_path):
    torch.manual_seed(0)
    config = JEPAStageConfig(
        out=tmp_path / "jepa", data=DataConfig(dataset=blob_dataset), **TINY,
        optim=OptimConfig(steps=60, batch_size=16, lr=2e-3, warmup_steps=5, log_every=1,
                          checkpoint_every=30, ema_decay=0.0),
        runtime=RuntimeConfig(threads=1),
    )  # fmt: skip
    path = run_jepa_stage(config, progress=False)
    import pandas as pd

    losses = pd.read_csv(config.out / "loss.csv")["loss"].to_numpy()
    assert losses[-10:].mean() < 0.8 * losses[:5].mean()
    encoder = JEPAEncoder.from_pretrained(path)
    assert encoder.frozen and encoder.grid == (4, 4) and encoder.latent_dim == 32
    latents = encoder.encode(np.zeros((2, 32, 32, 3), np.uint8))
    assert latents.shape == (2, 16, 32) and torch.isfinite(latents).all()
    with pytest.raises(NotImplementedError, match="no pixel decoder"):
        encoder.decode(latents)
    # a rerun resumes the finished run instead of training again
    assert run_jepa_stage(config, progress=False) == path


def test_a_bundle_on_the_jepa_encoder_carries_its_weights(blob_dataset, tmp_path):
    from train.stage_encoder import EncoderStageConfig, run_encoder_stage
    from wm_env.bundle import read_config
    from wm_env.model.encoders import build_encoder
    from wm_env.world_model import build_encoder_from_config

    torch.manual_seed(0)
    source = JEPAEncoder.from_config(JEPAConfig(**TINY)).save_pretrained(tmp_path / "enc")
    bundle = tmp_path / "bundle"
    run_encoder_stage(EncoderStageConfig(bundle=bundle, encoder="jepa", path=source))
    config = read_config(bundle)
    assert config["encoder"]["name"] == "jepa" and config["encoder"]["grid"] == [4, 4]
    (source / "model.safetensors").unlink()  # the bundle does not need the source any more
    loaded = build_encoder_from_config(config, bundle)
    frames = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    torch.manual_seed(1)
    fresh = JEPAEncoder.from_config(JEPAConfig(**TINY))
    assert not torch.allclose(loaded.encode(frames), fresh.encode(frames))
    with pytest.raises(ValueError, match="needs --path"):
        run_encoder_stage(EncoderStageConfig(bundle=bundle, encoder="jepa"))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        build_encoder("jepa", path=source)
