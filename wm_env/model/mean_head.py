"""A convolutional regression head for the conditional mean of the next frame's target.

The DiT's flow then models only what the mean leaves out (the residual), as in regression +
diffusion "residual" models (CorrDiff, ResShift). Why: on a CPU budget the flow objective is slow
to learn how an action moves the arm (the tiny DiT explained about a quarter of the next latent
change after 7000 steps), while a small CNN on the latent grid, which sees the last frames and
the action at every cell, learns it in minutes (about 70% after 8 minutes of one core) and its
prediction beats copying the last frame. At temperature 0 the world model's step is close to
this mean; at temperature 1 the flow adds the variation around it.

Shapes: ``B`` batch, ``l`` context frames, ``V`` views, ``h, w`` latent grid of one view,
``N = h * w``, ``D`` latent channels, ``A`` action (condition) width, ``W`` head width.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

GROUPS = 8  # GroupNorm groups; the width must be a multiple


class _ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(GROUPS, width),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(GROUPS, width),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MeanHead(nn.Module):
    """Conditional mean of the next frame's target from the last ``history`` frames and its action.

    Args:
        channels: latent channels ``D``.
        grid: ``(h, w)`` latent grid of one view.
        history: context frames it reads (fewer given: the first is repeated).
        action_dim: condition width ``A`` (the DiT's ``action_dim``).
        width: hidden channels ``W`` (a multiple of 8).
        depth: residual blocks of two 3x3 convolutions.
        state_dim: width of the robot state that follows the action in the condition (0: none);
            the state is also drawn onto the grid by a :class:`wm_env.model.state_head.StateMap` of
            ``state_map_channels`` channels, so every cell knows where the arm should be.
        anchor: also read the episode's first frame (its latents, as extra input channels at
            every cell). With only ``history`` recent frames, an object the arm hides is gone
            from the context and comes back in another colour or not at all; the first frame
            still shows it, so the head can copy what did not move.

    The output layer starts at zero, so an untrained head predicts "no change" for the delta
    target.
    """

    def __init__(
        self,
        channels: int,
        grid: tuple[int, int],
        history: int,
        action_dim: int,
        width: int = 96,
        depth: int = 4,
        state_dim: int = 0,
        state_map_channels: int = 8,
        anchor: bool = False,
    ) -> None:
        super().__init__()
        if width < GROUPS or width % GROUPS:
            raise ValueError(
                f"mean head width must be a positive multiple of {GROUPS}; got {width}"
            )
        if history < 1 or depth < 0:
            raise ValueError(f"mean head needs history >= 1 and depth >= 0; got {history}, {depth}")
        self.channels, self.grid, self.history = channels, tuple(grid), history
        self.action_dim, self.width, self.depth = action_dim, width, depth
        self.state_dim, self.anchor = state_dim, anchor
        self.state_map = None
        map_channels = 0
        if state_dim:
            from wm_env.model.state_head import StateMap

            self.state_map = StateMap(state_dim, grid, state_map_channels)
            map_channels = state_map_channels
        # input channels: context latents, the condition (action, state), the state map, the anchor
        anchor_channels = channels if anchor else 0
        self.inp = nn.Conv2d(
            history * channels + action_dim + state_dim + map_channels + anchor_channels,
            width,
            3,
            padding=1,
        )
        self.blocks = nn.Sequential(*[_ResidualBlock(width) for _ in range(depth)])
        self.out = nn.Sequential(
            nn.GroupNorm(GROUPS, width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(
        self, context: torch.Tensor, action: torch.Tensor, anchor: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Context latents ``(B, l, V*N, D)``, the new frame's condition ``(B, A [+ S])`` and,
        for an anchored head, the episode's first frame ``(B, V*N, D)`` -> the target's
        conditional mean ``(B, V*N, D)``."""
        h, w = self.grid
        B, given, tokens, D = context.shape
        if D != self.channels or tokens % (h * w) or given < 1:
            raise ValueError(
                f"context must be (B, l >= 1, V*{h * w}, {self.channels}); got {tuple(context.shape)}"
            )
        width = self.action_dim + self.state_dim
        if tuple(action.shape) != (B, width):
            raise ValueError(f"condition must be ({B}, {width}); got {tuple(action.shape)}")
        if self.anchor and (anchor is None or tuple(anchor.shape) != (B, tokens, D)):
            got = None if anchor is None else tuple(anchor.shape)
            raise ValueError(
                f"this mean head reads the first frame ({B}, {tokens}, {D}); got {got}"
            )
        if given < self.history:
            pad = context[:, :1].expand(B, self.history - given, tokens, D)
            context = torch.cat([pad, context], dim=1)
        context = context[:, -self.history :]
        views = tokens // (h * w)
        x = rearrange(context, "b l (v hh ww) d -> (b v) (l d) hh ww", v=views, hh=h, ww=w)
        a = action.to(x.dtype).repeat_interleave(views, dim=0)[:, :, None, None]
        parts = [x, a.expand(-1, -1, h, w)]  # (B*V, l*D, h, w), (B*V, A [+ S], h, w)
        if self.state_map is not None:
            parts.append(self.state_map(a[:, self.action_dim :, 0, 0]))  # (B*V, k, h, w)
        if self.anchor:
            first = rearrange(anchor, "b (v hh ww) d -> (b v) d hh ww", v=views, hh=h, ww=w)
            parts.append(first.to(x.dtype))  # (B*V, D, h, w)
        x = torch.cat(parts, dim=1)
        out = self.out(self.blocks(self.inp(x)))  # (B*V, D, h, w)
        return rearrange(out, "(b v) d hh ww -> b (v hh ww) d", v=views)

    def flops(self, views: int = 1) -> int:
        """Matmul FLOPs (``2 m n k``) of one forward for one frame."""
        cells = views * self.grid[0] * self.grid[1]
        per_conv = 2 * 9 * cells * self.width * self.width
        first = 2 * 9 * cells * self.inp.in_channels * self.width
        last = 2 * 9 * cells * self.width * self.channels
        return first + 2 * self.depth * per_conv + last
