"""Image metrics for world-model rollouts: PSNR and SSIM on frames in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _as_float(frames: torch.Tensor) -> torch.Tensor:
    return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB of ``(..., H, W, 3)`` frames (uint8, or float in [0, 1])."""
    mse = (_as_float(pred) - _as_float(target)).pow(2).flatten(-3).mean(-1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(
    pred: torch.Tensor, target: torch.Tensor, window: int = 7, sigma: float = 1.5
) -> torch.Tensor:
    """Per-frame SSIM (Wang et al. 2004, Gaussian window, averaged over RGB) of ``(..., H, W, 3)``.

    The window is 7 rather than 11 pixels: frames here are as small as 64x64.
    """
    x, y = _as_float(pred), _as_float(target)
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)  # (B, 3, H, W)
    y = y.reshape(-1, *y.shape[-3:]).permute(0, 3, 1, 2)
    coords = torch.arange(window, dtype=torch.float32, device=x.device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum())[None, :]
    kernel = (g.T @ g).expand(3, 1, window, window)  # (3, 1, k, k) depthwise

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, kernel, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).reshape(lead)
