"""Pixel decoder (wm_env/model/decoder.py) and the offline ST-LPIPS perceptual loss (train/perceptual.py)."""

from __future__ import annotations

import dataclasses
import socket

import pytest
import torch

from train.perceptual import PERCEPTUAL, build_perceptual
from wm_env.errors import UnknownNameError
from wm_env.model.decoder import PixelDecoder, PixelDecoderConfig, decoder_loss, decoder_train_step


def tiny_config(**overrides) -> PixelDecoderConfig:
    kwargs = dict(
        latent_dim=8,
        grid=(4, 4),
        base_channels=16,
        channel_multipliers=(2, 1, 1),
        num_res_blocks=1,
        attn_resolutions=(4,),
    )
    kwargs.update(overrides)
    return PixelDecoderConfig(**kwargs)


def target_frames(b: int = 4, size: int = 16) -> torch.Tensor:
    """float (B, size, size, 3) in [0, 1]: gradients and a square, different per frame."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for i in range(b):
        c = torch.rand(3, generator=g) * 0.8 + 0.2
        img = torch.stack([xx * c[0], yy * c[1], (1 - xx) * c[2]], -1)
        s = size // 4
        img[i : i + s, 2 * i : 2 * i + s] = torch.rand(3, generator=g)
        out.append(img)
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# Pixel decoder
# ----------------------------------------------------------------------------------------------


def test_default_and_paper_configs():
    cpu = PixelDecoderConfig()
    assert cpu.grid == (8, 8) and cpu.image_size == (64, 64) and cpu.base_channels == 32
    paper = PixelDecoderConfig.paper()
    assert paper.image_size == (256, 256) and paper.latent_dim == 96
    assert paper.level_channels == (1024, 512, 256, 128, 128)
    assert paper.attn_resolutions == (16,) and paper.num_res_blocks == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cpu.base_channels = 8  # type: ignore[misc]
    with pytest.raises(ValueError):
        PixelDecoderConfig(channel_multipliers=())
    with pytest.raises(ValueError, match="heads"):
        PixelDecoderConfig(base_channels=6, attn_heads=4)
    dec = PixelDecoder(cpu)
    assert 0.5e6 < dec.num_parameters() < 5e6  # a CPU-sized decoder


def test_shapes_range_and_leading_dims():
    torch.manual_seed(0)
    dec = PixelDecoder(tiny_config())
    z = torch.randn(2, 3, 16, 8)  # (B, T, N, D)
    with torch.no_grad():
        x = dec(z)
    assert x.shape == (2, 3, 16, 16, 3)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    with torch.no_grad():
        torch.testing.assert_close(dec(z.reshape(6, 16, 8)).reshape(x.shape), x)
    with pytest.raises(ValueError, match="16, 8"):
        dec(torch.randn(2, 15, 8))


def test_paper_shaped_decoder_upsamples_16_to_256():
    cfg = dataclasses.replace(PixelDecoderConfig.paper(latent_dim=4), base_channels=2)
    dec = PixelDecoder(cfg)
    with torch.no_grad():
        assert dec(torch.randn(1, 256, 4)).shape == (1, 256, 256, 3)
    n_attn = sum(type(m).__name__ == "_AttnBlock" for m in dec.modules())
    assert n_attn == 2  # mid block + the 16x16 level


def test_overfits_one_batch_on_frozen_latents():
    torch.manual_seed(0)
    dec = PixelDecoder(tiny_config())
    latents = torch.randn(4, 16, 8, requires_grad=True)  # a stand-in for frozen latents
    images = (target_frames(4) * 255).round().to(torch.uint8)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    losses = [decoder_train_step(dec, latents, images, opt)["l1"] for _ in range(60)]
    assert latents.grad is None  # nothing upstream of the decoder is trained
    assert losses[-1] < 0.2 * losses[0], losses[::10]


def test_decoder_loss_terms():
    pred = torch.rand(2, 16, 16, 3)
    terms = decoder_loss(pred, pred.clone())
    assert float(terms["loss"]) == 0.0 and float(terms["perceptual"]) == 0.0
    u8 = (pred * 255).round().to(torch.uint8)
    assert float(decoder_loss(pred, u8)["l1"]) < 1 / 255
    with pytest.raises(ValueError, match="differ"):
        decoder_loss(pred, torch.rand(2, 8, 8, 3))


# ----------------------------------------------------------------------------------------------
# ST-LPIPS (bundled weights, loaded offline)
# ----------------------------------------------------------------------------------------------


def test_build_perceptual_registry():
    assert build_perceptual(None) is None
    assert {"stlpips", "stlpips-vgg"} <= set(PERCEPTUAL)
    with pytest.raises(UnknownNameError, match="did you mean 'stlpips'"):
        build_perceptual("stlpip")


def test_missing_stlpips_package_names_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "stlpips_pytorch" else real(name, *a),
    )
    with pytest.raises(ImportError, match="stlpips-pytorch"):
        build_perceptual("stlpips")


@pytest.fixture(scope="module")
def stlpips():
    pytest.importorskip("stlpips_pytorch")
    return build_perceptual("stlpips")


def test_stlpips_loads_bundled_weights_without_network(monkeypatch):
    pytest.importorskip("stlpips_pytorch")

    def no_network(*args, **kwargs):
        raise AssertionError("ST-LPIPS tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    metric = build_perceptual("stlpips")
    state = torch.load(metric.weights_path, map_location="cpu", weights_only=True)
    assert set(state) == set(metric.state_dict())  # every weight comes from the file
    torch.testing.assert_close(
        metric.state_dict()["lin0.model.1.weight"], state["lin0.model.1.weight"]
    )
    assert not any(p.requires_grad for p in metric.parameters())


def test_stlpips_behaves_like_a_distance(stlpips):
    x = target_frames(2, 64)
    noisy = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    noisier = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    d0, d1, d2 = stlpips(x, x), stlpips(x, noisy), stlpips(x, noisier)
    assert d0.shape == (2,) and torch.allclose(d0, torch.zeros(2))
    assert (d1 > 0).all() and (d2 > d1).all()
    shifted = torch.roll(x, 1, dims=2)  # a 1-pixel shift is cheap for the shift-tolerant metric
    assert (stlpips(x, shifted) < d2).all()
    with pytest.raises(ValueError, match="32x32"):
        stlpips(torch.rand(1, 16, 16, 3), torch.rand(1, 16, 16, 3))


def test_stlpips_gives_gradients_to_the_prediction(stlpips):
    pred = torch.rand(2, 32, 32, 3, requires_grad=True)
    terms = decoder_loss(pred, torch.rand(2, 32, 32, 3), perceptual=stlpips, perceptual_weight=0.5)
    terms["loss"].backward()
    assert float(terms["perceptual"]) > 0 and pred.grad is not None and pred.grad.abs().sum() > 0
