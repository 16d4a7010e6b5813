"""Pixel decoder: an LDM-style CNN from (adapter) latent tokens to RGB frames.

Latents ``(..., N, D)`` on a ``grid`` ``(h, w)`` (``N = h * w``, row-major) become frames
``(..., H, W, 3)`` in ``[0, 1]`` with ``H = h * 2 ** (levels - 1)``:

    1x1 conv D -> C * m[0]; mid ResBlock, attention, ResBlock (at the latent resolution)
    for each level i: num_res_blocks ResBlocks to C * m[i] (+ attention if the level's
        resolution is in attn_resolutions), then nearest 2x upsample + 3x3 conv (not after
        the last level)
    GroupNorm, SiLU, 3x3 conv to RGB, sigmoid

``channel_multipliers`` run from the latent (innermost, widest) level to the output level, as
the recipe writes them: the paper's decoder is ``base 128 x (8, 4, 2, 1, 1)``, 2 ResBlocks per
level, attention at 16x16, 16x16 latents to 256x256 frames (:meth:`PixelDecoderConfig.paper`).
The CPU default maps 8x8 latents to 64x64 frames with ``base 32 x (4, 2, 1, 1)``.

It is trained on FROZEN latents (detached: no gradient reaches the encoder or adapter) with
``L1 + perceptual`` (:func:`decoder_loss`, :func:`decoder_train_step`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PixelDecoder", "PixelDecoderConfig", "decoder_loss", "decoder_train_step"]


@dataclass(frozen=True)
class PixelDecoderConfig:
    """Pixel decoder shape (defaults: the CPU decoder, 8x8x8 latents to 64x64 frames).

    Attributes:
        latent_dim: token width D of the latents it decodes.
        grid: latent grid (h, w).
        base_channels: C; level i has ``C * channel_multipliers[i]`` channels.
        channel_multipliers: from the latent level (first) to the output level (last); the
            number of 2x upsamplings is ``len(channel_multipliers) - 1``.
        num_res_blocks: ResBlocks per level.
        attn_resolutions: side lengths (of ``grid[0] * 2**level``) whose level ends with a
            self-attention block.
        mid_attention: self-attention in the mid block (at the latent resolution).
        attn_heads: heads of every attention block.
    """

    latent_dim: int = 8
    grid: tuple[int, int] = (8, 8)
    base_channels: int = 32
    channel_multipliers: tuple[int, ...] = (4, 2, 1, 1)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    mid_attention: bool = True
    attn_heads: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        object.__setattr__(
            self, "channel_multipliers", tuple(int(m) for m in self.channel_multipliers)
        )
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.latent_dim < 1 or len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(
                f"need latent_dim >= 1 and a 2-D grid, got {self.latent_dim}, {self.grid}"
            )
        if (
            self.base_channels < 1
            or not self.channel_multipliers
            or min(self.channel_multipliers) < 1
        ):
            raise ValueError("need base_channels >= 1 and positive channel_multipliers")
        if self.num_res_blocks < 1 or self.attn_heads < 1 or not 0 <= self.dropout < 1:
            raise ValueError("need num_res_blocks >= 1, attn_heads >= 1, 0 <= dropout < 1")
        for ch in self.level_channels:
            if ch % self.attn_heads:
                raise ValueError(
                    f"{ch} channels are not divisible by {self.attn_heads} attention heads"
                )

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of each level, latent level first."""
        return tuple(self.base_channels * m for m in self.channel_multipliers)

    @property
    def upsample_factor(self) -> int:
        """Output pixels per latent token along each side."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the frames it outputs."""
        f = self.upsample_factor
        return (self.grid[0] * f, self.grid[1] * f)

    @classmethod
    def paper(cls, latent_dim: int = 96, grid: tuple[int, int] = (16, 16)) -> PixelDecoderConfig:
        """The paper's decoder: base 128 x (8, 4, 2, 1, 1), 2 ResBlocks, attention at 16x16."""
        return cls(
            latent_dim=latent_dim,
            grid=grid,
            base_channels=128,
            channel_multipliers=(8, 4, 2, 1, 1),
            num_res_blocks=2,
            attn_resolutions=(16,),
        )


def _groups(ch: int) -> int:
    """GroupNorm groups: the largest divisor of ``ch`` not above 32."""
    return max(g for g in range(1, min(32, ch) + 1) if ch % g == 0)


class _ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, GroupNorm, SiLU, (dropout), 3x3 conv, plus a (1x1) skip."""

    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out, eps=1e-6)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _AttnBlock(nn.Module):
    """Spatial self-attention over the h*w positions with a GroupNorm pre-norm and residual."""

    def __init__(self, ch: int, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(ch), ch, eps=1e-6)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, hw, c/heads)
        a = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(a)


class _Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class PixelDecoder(nn.Module):
    """LDM-style CNN decoder: latents ``(..., N, D)`` -> frames ``(..., H, W, 3)`` in [0, 1]."""

    def __init__(self, config: PixelDecoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PixelDecoderConfig()
        chans = config.level_channels
        self.proj_in = nn.Conv2d(config.latent_dim, chans[0], 1)
        self.mid = nn.Sequential(
            _ResBlock(chans[0], chans[0], config.dropout),
            _AttnBlock(chans[0], config.attn_heads) if config.mid_attention else nn.Identity(),
            _ResBlock(chans[0], chans[0], config.dropout),
        )
        self.levels = nn.ModuleList()
        c, res = chans[0], config.grid[0]
        for i, c_out in enumerate(chans):
            layers: list[nn.Module] = []
            for _ in range(config.num_res_blocks):
                layers.append(_ResBlock(c, c_out, config.dropout))
                c = c_out
            if res in config.attn_resolutions:
                layers.append(_AttnBlock(c, config.attn_heads))
            if i < len(chans) - 1:
                layers.append(_Upsample(c))
                res *= 2
            self.levels.append(nn.Sequential(*layers))
        self.norm_out = nn.GroupNorm(_groups(c), c, eps=1e-6)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the output frames."""
        return self.config.image_size

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode ``(..., N, D)`` latents (N = h * w, row-major) to ``(..., H, W, 3)`` in [0, 1]."""
        h, w = self.config.grid
        d = self.config.latent_dim
        if latents.ndim < 3 or latents.shape[-2:] != (h * w, d):
            raise ValueError(f"latents must be (..., {h * w}, {d}), got {tuple(latents.shape)}")
        lead = latents.shape[:-2]
        b = math.prod(lead)
        x = latents.reshape(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w)
        x = self.mid(self.proj_in(x))
        for level in self.levels:
            x = level(x)
        x = torch.sigmoid(self.conv_out(F.silu(self.norm_out(x))))  # (B, 3, H, W)
        return x.permute(0, 2, 3, 1).reshape(*lead, *x.shape[-2:], 3)


def decoder_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    perceptual: nn.Module | None = None,
    perceptual_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """``L1 + perceptual_weight * perceptual`` between frames ``(B, H, W, 3)`` in [0, 1].

    ``target`` may be uint8. ``perceptual`` maps ``(pred, target)`` to per-frame distances
    (e.g. ``train.perceptual.build_perceptual("stlpips")``); leading dims beyond B are folded.

    Returns:
        dict of scalars: ``loss`` (to backprop), ``l1``, ``perceptual`` (0 without one).
    """
    if target.dtype == torch.uint8:
        target = target.float() / 255.0
    target = target.to(pred)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    l1 = (pred - target).abs().mean()
    total = l1
    perc = pred.new_zeros(())
    if perceptual is not None:
        p2, t2 = pred.reshape(-1, *pred.shape[-3:]), target.reshape(-1, *target.shape[-3:])
        perc = perceptual(p2, t2).mean()
        total = total + perceptual_weight * perc
    return {"loss": total, "l1": l1.detach(), "perceptual": perc.detach()}


def decoder_train_step(
    decoder: PixelDecoder,
    latents: torch.Tensor,
    images: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    perceptual: nn.Module | None = None,
    perceptual_weight: float = 1.0,
    grad_clip: float | None = 1.0,
) -> dict[str, float]:
    """One optimiser step of the decoder on frozen (detached) latents.

    Args:
        latents: ``(..., N, D)``; detached here, so nothing upstream gets gradients.
        images: target frames ``(..., H, W, 3)`` (torch), uint8 or float in [0, 1].

    Returns:
        the loss terms as floats (``loss``, ``l1``, ``perceptual``, ``grad_norm``).
    """
    decoder.train()
    pred = decoder(latents.detach())
    terms = decoder_loss(pred, images.to(pred.device), perceptual, perceptual_weight)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    gn = torch.nn.utils.clip_grad_norm_(
        decoder.parameters(), grad_clip if grad_clip else float("inf")
    )
    optimizer.step()
    out = {k: float(v.detach()) for k, v in terms.items()}
    out["grad_norm"] = float(gn)
    return out
