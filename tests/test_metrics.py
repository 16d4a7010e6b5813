"""Image metrics of world-model rollouts (train/metrics.py): PSNR and SSIM."""

from __future__ import annotations

import math

import pytest
import torch

from train.metrics import psnr, ssim


def frames(*lead: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Float frames ``(*lead, size, size, 3)`` in [0, 1]: a smooth gradient plus texture."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    base = 0.5 * (ramp[:, None, None] + ramp[None, :, None]) * torch.tensor([1.0, 0.6, 0.3])
    noise = 0.2 * torch.rand(*lead, size, size, 3, generator=g)
    return (0.8 * base + noise).clamp(0, 1)


def test_psnr_of_identical_frames_hits_the_clamp():
    x = frames(3)
    value = psnr(x, x)
    assert value.shape == (3,)
    assert torch.all(value >= 90)
    assert torch.allclose(value, torch.full((3,), 100.0))  # 10 log10(1 / 1e-10)


@pytest.mark.parametrize("mse", [1e-4, 0.01, 0.25])
def test_psnr_of_a_known_mse(mse):
    x = torch.zeros(2, 8, 8, 3)
    y = torch.full_like(x, math.sqrt(mse))
    assert torch.allclose(psnr(x, y), torch.full((2,), 10 * math.log10(1 / mse)), atol=1e-4)


def test_psnr_is_per_frame_and_reads_uint8_as_0_255():
    x = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    y = x.clone()
    y[1] = 51  # 51 / 255 = 0.2 -> mse 0.04 -> ~13.98 dB; frame 0 stays identical
    value = psnr(x, y)
    assert value[0] == pytest.approx(100.0)
    assert value[1] == pytest.approx(10 * math.log10(1 / 0.04), abs=1e-3)


def test_ssim_of_identical_frames_is_one():
    x = frames(4)
    assert torch.allclose(ssim(x, x), torch.ones(4), atol=1e-5)


def test_ssim_decreases_with_noise():
    x = frames(2, size=24)
    g = torch.Generator().manual_seed(1)
    values = [
        ssim(x, (x + level * torch.randn(x.shape, generator=g)).clamp(0, 1))
        for level in (0.0, 0.02, 0.1, 0.3)
    ]
    for less_noise, more_noise in zip(values, values[1:], strict=False):
        assert torch.all(more_noise < less_noise)
    assert torch.all(values[-1] < 0.5)


def test_ssim_reads_uint8_like_float():
    x = frames(2, seed=2)
    y = frames(2, seed=3)
    x8, y8 = (x * 255).round().to(torch.uint8), (y * 255).round().to(torch.uint8)
    assert torch.allclose(ssim(x8, y8), ssim(x8.float() / 255, y8.float() / 255), atol=1e-6)
    assert torch.allclose(psnr(x8, y8), psnr(x8.float() / 255, y8.float() / 255), atol=1e-4)


def test_leading_batch_dims_are_preserved():
    x, y = frames(2, 3, seed=4), frames(2, 3, seed=5)
    s, p = ssim(x, y), psnr(x, y)
    assert s.shape == p.shape == (2, 3)
    flat_s = ssim(x.reshape(6, *x.shape[2:]), y.reshape(6, *y.shape[2:]))
    assert torch.allclose(s.reshape(6), flat_s)
    # a single frame without a batch dim gives a scalar
    assert ssim(x[0, 0], y[0, 0]).shape == ()
    assert psnr(x[0, 0], y[0, 0]).shape == ()


def test_ssim_is_symmetric():
    x, y = frames(2, seed=6), frames(2, seed=7)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-6)
