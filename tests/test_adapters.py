"""Adapters (wm_env/model/adapters.py): registry, configs, S-VAE schedule, loss, determinism, freezing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wm_env.errors import UnknownNameError
from wm_env.model.adapters import (
    ADAPTERS,
    IdentityAdapter,
    MLPAdapter,
    MLPAdapterConfig,
    SVAEAdapter,
    SVAEConfig,
    build_adapter,
    kl_warmup_weight,
)

B, N, D = 4, 16, 32


def features(seed: int = 0) -> torch.Tensor:
    """(B, N, D) structured features: a few directions mixed per token, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(6, D, generator=g)
    mix = torch.randn(B, N, 6, generator=g)
    return mix @ basis + 0.05 * torch.randn(B, N, D, generator=g)


def tiny_svae(**overrides) -> SVAEAdapter:
    torch.manual_seed(0)
    return build_adapter("svae", D, latent_dim=8, num_heads=2, **overrides)


def test_registry_and_did_you_mean():
    assert set(ADAPTERS) >= {"identity", "mlp", "svae"}
    with pytest.raises(UnknownNameError, match="did you mean 'svae'"):
        build_adapter("s-vae", D)
    assert isinstance(build_adapter("identity", D), IdentityAdapter)
    assert isinstance(build_adapter("mlp", D, latent_dim=8), MLPAdapter)


def test_configs_are_frozen_and_validated():
    cfg = SVAEConfig(in_dim=768)
    assert (cfg.latent_dim, cfg.num_layers, cfg.kl_weight, cfg.kl_warmup_fraction) == (
        96,
        3,
        1e-4,
        0.2,
    )
    assert cfg.heads == 12  # 768 / 64
    assert SVAEConfig(in_dim=40).heads == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.latent_dim = 8  # type: ignore[misc]
    with pytest.raises(ValueError, match="divide"):
        SVAEConfig(in_dim=30, num_heads=4)
    with pytest.raises(ValueError):
        SVAEConfig(in_dim=32, kl_warmup_fraction=1.5)
    with pytest.raises(ValueError):
        MLPAdapterConfig(in_dim=0)
    assert MLPAdapterConfig(in_dim=32, latent_dim=8).hidden == 20


def test_kl_warmup_schedule_values():
    total = 1000  # warm-up over the first 200 steps
    assert kl_warmup_weight(0, total) == 0.0
    assert kl_warmup_weight(50, total) == pytest.approx(0.25e-4)
    assert kl_warmup_weight(100, total) == pytest.approx(0.5e-4)
    assert kl_warmup_weight(200, total) == pytest.approx(1e-4)
    assert kl_warmup_weight(900, total) == pytest.approx(1e-4)
    assert kl_warmup_weight(3, 4) == pytest.approx(1e-4)  # warm-up shorter than a step
    assert kl_warmup_weight(0, 10, warmup_fraction=0.0) == pytest.approx(1e-4)
    adapter = tiny_svae()
    assert adapter.kl_weight_at(100, 1000) == pytest.approx(0.5e-4)
    terms = adapter.loss(features(), step=100, total_steps=1000)
    assert float(terms["kl_weight"]) == pytest.approx(0.5e-4)


@pytest.mark.parametrize("name", ["identity", "mlp", "svae"])
def test_shapes_and_leading_dims(name):
    torch.manual_seed(0)
    adapter = build_adapter(name, D, **({} if name == "identity" else {"latent_dim": 8}))
    x = features()
    z = adapter.encode(x)
    assert z.shape == (B, N, adapter.latent_dim)
    assert adapter.decode(z).shape == (B, N, D)
    mean, logvar = adapter.encode_dist(x)
    torch.testing.assert_close(mean, z)
    assert (logvar is None) == (name != "svae")
    x5 = x.reshape(2, 2, N, D)  # (B, T, N, D) works too
    torch.testing.assert_close(adapter.encode(x5).reshape(B, N, -1), z)
    with pytest.raises(ValueError, match=f"{D}"):
        adapter.encode(torch.zeros(B, N, D + 1))
    assert "loss" in adapter.loss(x, 0, 10)


def test_svae_structure_follows_the_recipe():
    adapter = build_adapter("svae", 64)
    assert len(adapter.enc_blocks) == 3 and len(adapter.dec_blocks) == 3
    assert adapter.enc_proj.out_features == 2 * 96 and adapter.dec_proj.in_features == 96
    assert isinstance(adapter.dec_norm, torch.nn.LayerNorm)
    # pre-LN blocks: the residual stream is normalised only inside each branch
    blk = adapter.enc_blocks[0]
    assert isinstance(blk.norm1, torch.nn.LayerNorm) and blk.qkv.in_features == 64


def test_svae_encode_is_deterministic_mean_and_sampling_is_not():
    adapter = tiny_svae()
    adapter.train()
    x = features()
    with torch.no_grad():
        z1, z2 = adapter.encode(x), adapter.encode(x)
        mean, logvar = adapter.encode_dist(x)
        s1, s2 = adapter.sample(x), adapter.sample(x)
    torch.testing.assert_close(z1, z2)
    torch.testing.assert_close(z1, mean)
    assert not torch.allclose(s1, s2)
    assert logvar.shape == mean.shape == (B, N, 8)


@pytest.mark.parametrize("name", ["mlp", "svae"])
def test_loss_decreases_on_a_fixed_batch(name):
    torch.manual_seed(0)
    opts = {"latent_dim": 8} if name == "mlp" else {"latent_dim": 8, "num_heads": 2}
    adapter = build_adapter(name, D, **opts)
    x = features()
    opt = torch.optim.AdamW(adapter.parameters(), lr=2e-3)
    total = 60
    first = None
    for step in range(total):
        terms = adapter.loss(x, step, total)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        if first is None:
            first = {k: float(v.detach()) for k, v in terms.items()}
    last = {k: float(v.detach()) for k, v in terms.items()}
    assert last["loss"] < 0.5 * first["loss"], (first, last)
    assert last["cos"] < first["cos"] and last["mse"] < first["mse"]
    if name == "svae":
        assert first["kl_weight"] == 0.0 and last["kl_weight"] == pytest.approx(1e-4)
        assert last["kl"] > 0


def test_freeze_stops_grads_and_keeps_eval():
    adapter = tiny_svae(dropout=0.1)
    assert not adapter.frozen
    adapter.freeze()
    assert adapter.frozen and not adapter.training
    assert not any(p.requires_grad for p in adapter.parameters())
    adapter.train()
    assert not any(m.training for m in adapter.modules())
    z = adapter.encode(features())
    assert not z.requires_grad
    torch.testing.assert_close(adapter.encode(features()), z)


def test_identity_is_identity():
    a = build_adapter("identity", D)
    x = features()
    assert a.encode(x) is x and a.decode(x) is x and a.latent_dim == D
    assert float(a.loss(x)["loss"]) == 0.0
