"""DiT transition model over latent token grids: factored spatial/temporal attention.

One forward pass maps a clip of noisy latent frames, their per-frame flow times and the actions
that condition them to a velocity per token. Each layer is a spatial sub-block (bidirectional
attention within one frame, over every view's tokens) followed by a temporal sub-block (causal
attention over frames, separately at every spatial token position). Frames only talk to each
other through the causal temporal attention, so the keys and values of past frames can be cached
and a rollout of many frames costs linear, not quadratic, time (:class:`TemporalKVCache`).

Shapes: ``B`` batch, ``T`` frames, ``V`` views, ``h, w`` latent grid of one view, ``N = h * w``
tokens per view, ``D`` latent channels, ``p`` patch size, ``S = V * (h / p) * (w / p)`` tokens
per frame inside the transformer, ``C`` hidden width, ``H`` heads, ``d = C / H`` head width.
Latents are channels-last, views concatenated view-major along the token axis and each view's
tokens row-major over ``(h, w)``: ``x[b, t, v * N + i * w + j]`` is token ``(i, j)`` of view
``v``.

RoPE layout (base 1e4, pairs ``(k, k + d/2)`` of a head rotate together):
- spatial: the ``d/2`` pairs are split over three axes ``[view | row | col]``; the view axis gets
  about an eighth of them, rows and cols the rest equally. View 0 rotates by angle 0, so a
  single-view clip sees exactly the same attention in a 1-view and in an N-view model: the
  parameters do not depend on the number of views and a 1-view checkpoint loads into a
  multi-view model unchanged.
- temporal: all ``d/2`` pairs rotate with the ABSOLUTE frame index. Attention scores depend only
  on the difference of positions, so absolute positions give the same results as positions
  inside a window, and keys rotated once when they enter the cache stay valid forever.

Sampling lives in ``wm_env/model/flow.py``; this module knows nothing about noise schedules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from wm_env.errors import lookup

#################################################################################
#                               Size presets                                    #
#################################################################################

#: name -> (hidden width, depth, heads). S/B/L/XL are the reference sizes; "tiny" trains on a CPU.
DIT_PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (128, 6, 4),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}

TIME_EMBED_DIM = 256  # width of the sinusoidal embedding of 1000 * t
RMS_EPS = 1e-6


@dataclass(frozen=True)
class DiTConfig:
    """Configuration of a :class:`DiT`.

    Attributes:
        in_channels: latent channels ``D`` of a token.
        grid: ``(h, w)`` latent token grid of ONE view; both divisible by ``patch_size``.
        patch_size: patchify ``p x p`` tokens into one by a strided conv (1 or 2 in practice).
        preset: a key of :data:`DIT_PRESETS` giving hidden/depth/heads; ``None`` to set all three.
        hidden, depth, heads: override the preset's value when given. After construction they
            always hold the resolved integers.
        mlp_ratio: SwiGLU hidden width is ``2/3 * mlp_ratio * hidden`` rounded up to 8.
        action_dim: width of one frame's action vector (the null action is zeros with the last
            element 1).
        num_views: the most views one frame may hold; parameters do not depend on it.
        max_frames: the most frames one non-cached forward may take (the training clip length);
            the default KV-cache window is ``max_frames - 1``.
        action_dropout: probability, per sample and in training mode, of replacing all of its
            actions by the null action (for classifier-free guidance).
        qk_norm: RMS-normalise queries and keys per head before RoPE.
        rope_base: RoPE frequency base.
        mean_head_width: hidden channels of a :class:`wm_env.model.mean_head.MeanHead` that regresses
            the next frame's conditional mean from the context and action; the flow then
            models the residual. 0 (the default): no head, the flow models the whole target.
        mean_head_depth: residual blocks of the mean head.
        mean_head_history: context frames the mean head reads.
        state_dim: width ``S`` of the robot state each frame is conditioned on (0: none). The
            condition of a frame is then ``action_dim + S`` wide: its action followed by the
            normalised state at that frame (``wm_env/model/state_head.py``); the model also gets a
            :class:`wm_env.model.state_head.StateHead` that predicts the next state, and the state
            enters as a per-token map besides the adaLN condition.
        state_map_channels: channels per latent cell of the state map the mean head reads.
        state_head_actions: actions the state head reads (the new one and the ones into the
            last context frames; :class:`wm_env.model.state_head.StateHead`).
        mean_head_anchor: the mean head also reads the episode's first frame
            (:class:`wm_env.model.mean_head.MeanHead`, ``anchor``).
    """

    in_channels: int
    grid: tuple[int, int]
    patch_size: int = 2
    preset: str | None = "S"
    hidden: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float = 4.0
    action_dim: int = 7
    num_views: int = 1
    max_frames: int = 16
    action_dropout: float = 0.1
    qk_norm: bool = True
    rope_base: float = 10_000.0
    mean_head_width: int = 0
    mean_head_depth: int = 4
    mean_head_history: int = 2
    state_dim: int = 0
    state_map_channels: int = 8
    mean_head_anchor: bool = False
    state_head_actions: int = 1

    def __post_init__(self) -> None:
        grid = tuple(self.grid)
        if len(grid) != 2 or not all(isinstance(g, int) and g > 0 for g in grid):
            raise ValueError(f"grid must be two positive ints (h, w); got {self.grid!r}")
        object.__setattr__(self, "grid", grid)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1; got {self.in_channels}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1; got {self.patch_size}")
        if grid[0] % self.patch_size or grid[1] % self.patch_size:
            raise ValueError(
                f"grid {grid} is not divisible by patch_size {self.patch_size}: "
                f"use a patch size that divides both sides"
            )
        if self.preset is not None:
            sizes = lookup("DiT preset", self.preset, DIT_PRESETS)
            for name, value in zip(("hidden", "depth", "heads"), sizes, strict=True):
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        missing = [n for n in ("hidden", "depth", "heads") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"preset=None needs explicit {', '.join(missing)}")
        if self.hidden < 1 or self.depth < 1 or self.heads < 1:
            raise ValueError(
                f"hidden, depth, heads must be >= 1; got {self.hidden}, {self.depth}, {self.heads}"
            )
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        head_dim = self.hidden // self.heads
        if head_dim % 2 or head_dim < 6:
            raise ValueError(
                f"head width hidden/heads = {head_dim} must be even and >= 6 "
                f"(RoPE rotates pairs over three spatial axes)"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0; got {self.mlp_ratio}")
        if self.action_dim < 1:
            raise ValueError(f"action_dim must be >= 1; got {self.action_dim}")
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1; got {self.num_views}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1; got {self.max_frames}")
        if not 0.0 <= self.action_dropout <= 1.0:
            raise ValueError(f"action_dropout must be in [0, 1]; got {self.action_dropout}")
        if self.rope_base <= 1.0:
            raise ValueError(f"rope_base must be > 1; got {self.rope_base}")
        if self.state_dim < 0 or self.state_map_channels < 1:
            raise ValueError(
                f"state_dim must be >= 0 and state_map_channels >= 1; got {self.state_dim}, "
                f"{self.state_map_channels}"
            )
        if self.state_head_actions < 1:
            raise ValueError(f"state_head_actions must be >= 1; got {self.state_head_actions}")
        if self.mean_head_width < 0 or self.mean_head_depth < 0 or self.mean_head_history < 1:
            raise ValueError(
                f"mean head needs width >= 0, depth >= 0, history >= 1; got {self.mean_head_width}, "
                f"{self.mean_head_depth}, {self.mean_head_history}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def patch_grid(self) -> tuple[int, int]:
        """``(h / p, w / p)``: the token grid of one view inside the transformer."""
        return self.grid[0] // self.patch_size, self.grid[1] // self.patch_size

    @property
    def tokens_per_view(self) -> int:
        """``N = h * w``: input tokens of one view (before patching)."""
        return self.grid[0] * self.grid[1]

    @property
    def condition_width(self) -> int:
        """Width of one frame's condition: the action, then the state when ``state_dim``."""
        return self.action_dim + self.state_dim

    @property
    def mlp_hidden(self) -> int:
        return 8 * math.ceil(2 * self.mlp_ratio * self.hidden / 3 / 8)


def null_actions(
    batch: int,
    frames: int,
    action_dim: int,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The null action (zeros, last element 1) for every frame: ``(batch, frames, action_dim)``."""
    out = torch.zeros(batch, frames, action_dim, device=device, dtype=dtype)
    out[..., -1] = 1.0
    return out


#################################################################################
#                          Rotary position embeddings                           #
#################################################################################


def spatial_rope_split(head_dim: int) -> tuple[int, int, int]:
    """Rotary pairs given to the (view, row, col) axes; they sum to ``head_dim // 2``."""
    pairs = head_dim // 2
    per_axis = (pairs - max(1, pairs // 8)) // 2
    return pairs - 2 * per_axis, per_axis, per_axis


def _inverse_frequencies(n_pairs: int, base: float, device: torch.device) -> torch.Tensor:
    """``base ** (-k / n_pairs)`` for ``k < n_pairs``: standard RoPE over ``2 * n_pairs`` dims."""
    return base ** (-torch.arange(n_pairs, device=device, dtype=torch.float32) / n_pairs)


def spatial_rope(
    num_views: int, patch_grid: tuple[int, int], head_dim: int, base: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin ``(S, d/2)`` for the tokens of one frame, view-major then row-major."""
    hp, wp = patch_grid
    idx = torch.arange(num_views * hp * wp, device=device)  # (S,)
    coords = (idx // (hp * wp), (idx // wp) % hp, idx % wp)  # view, row, col
    angles = torch.cat(
        [
            c.float()[:, None] * _inverse_frequencies(n, base, device)[None]
            for c, n in zip(coords, spatial_rope_split(head_dim), strict=True)
        ],
        dim=-1,
    )  # (S, d/2)
    return angles.cos(), angles.sin()


def temporal_rope(
    positions: torch.Tensor, head_dim: int, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin ``(T, d/2)`` for absolute frame positions ``(T,)``."""
    freqs = _inverse_frequencies(head_dim // 2, base, positions.device)  # (d/2,)
    angles = positions.float()[:, None] * freqs[None]  # (T, d/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (..., L, d)`` pairwise, pair ``k`` = dims ``(k, k + d/2)``, by ``(L, d/2)``."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


#################################################################################
#                               Building blocks                                 #
#################################################################################


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim, without affine parameters, computed in fp32."""

    def __init__(self, eps: float = RMS_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class SwiGLU(nn.Module):
    """``W3 (silu(W1 x) * W2 x)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class TimestepEmbedder(nn.Module):
    """Flow time ``t`` in [0, 1] -> sinusoid of ``1000 t`` -> MLP: ``(...,) -> (..., C)``."""

    def __init__(self, hidden: int, freq_dim: int = TIME_EMBED_DIM) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )  # (dim/2,)
        args = t.float()[..., None] * freqs  # (..., dim/2)
        return torch.cat([args.cos(), args.sin()], dim=-1)  # (..., dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(1000.0 * t, self.freq_dim))


class SpatialAttention(nn.Module):
    """Bidirectional attention among the ``S`` tokens of each frame (all views together)."""

    def __init__(self, hidden: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.proj = nn.Linear(hidden, hidden)
        self.q_norm = RMSNorm() if qk_norm else nn.Identity()
        self.k_norm = RMSNorm() if qk_norm else nn.Identity()

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, None]:
        B, T = x.shape[:2]  # x: (B, T, S, C)
        q, k, v = rearrange(self.qkv(x), "b t s (n h d) -> n (b t) h s d", n=3, h=self.heads)
        q = apply_rope(self.q_norm(q), *rope)  # (B*T, H, S, d)
        k = apply_rope(self.k_norm(k), *rope)
        out = F.scaled_dot_product_attention(q, k, v)  # (B*T, H, S, d)
        out = rearrange(out, "(b t) h s d -> b t s (h d)", b=B, t=T)
        return self.proj(out), None


class TemporalAttention(nn.Module):
    """Causal attention over frames at each token position, optionally after cached frames.

    Returns the output and this call's rotated keys/values ``(B*S, H, T, d)`` for the cache.
    """

    def __init__(self, hidden: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.proj = nn.Linear(hidden, hidden)
        self.q_norm = RMSNorm() if qk_norm else nn.Identity()
        self.k_norm = RMSNorm() if qk_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, _, S, _ = x.shape  # x: (B, T, S, C)
        q, k, v = rearrange(self.qkv(x), "b t s (n h d) -> n (b s) h t d", n=3, h=self.heads)
        q = apply_rope(self.q_norm(q), *rope)  # (B*S, H, T, d)
        k = apply_rope(self.k_norm(k), *rope)
        new_kv = (k, v)
        if past is not None:
            # the cache may hold fp32 keys when it was filled outside autocast
            k = torch.cat([past[0].to(k.dtype), k], dim=2)  # (B*S, H, F + T, d)
            v = torch.cat([past[1].to(v.dtype), v], dim=2)
        if q.shape[2] == 1:  # one new frame (sampling, cache appends)
            out = single_query_attention(q, k, v, None if mask is None else mask[-1])
        elif mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = rearrange(out, "(b s) h t d -> b t s (h d)", b=B, s=S)
        return self.proj(out), new_kv


def single_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of one query over a few keys, in fp32: q ``(N, H, 1, d)``, k/v ``(N, H, K, d)``,
    ``visible`` bool ``(K,)`` (None: all) -> ``(N, H, 1, d)`` in v's dtype.

    What ``F.scaled_dot_product_attention`` computes, as elementwise products and sums: for
    the temporal attention of one new frame over a short window (K of 2-8 frames) the fused
    kernel spends most of its time on per-sequence set-up, and this is 2-3x faster at batch 16
    on a CPU.
    """
    scores = (q.float() * k.float()).sum(-1, keepdim=True) * q.shape[-1] ** -0.5  # (N, H, K, 1)
    if visible is not None:
        scores = scores.masked_fill(~visible[:, None], float("-inf"))
    weights = scores.softmax(dim=-2)  # over the K keys
    return (weights * v.float()).sum(-2, keepdim=True).to(v.dtype)  # (N, H, 1, d)


class SubBlock(nn.Module):
    """Pre-norm attention + SwiGLU, both modulated and gated by a zero-initialised 6-way adaLN."""

    def __init__(self, attn: nn.Module, hidden: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm()
        self.attn = attn
        self.norm2 = RMSNorm()
        self.mlp = SwiGLU(hidden, mlp_hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor, **attn_kwargs):
        # x: (B, T, S, C); c: (B, T, C) -> six (B, T, 1, C) modulations, one per frame
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c)[
            :, :, None
        ].chunk(6, dim=-1)
        a, aux = self.attn(modulate(self.norm1(x), shift_a, scale_a), **attn_kwargs)
        x = x + gate_a * a
        x = x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x, aux


class DiTLayer(nn.Module):
    """A spatial sub-block (within each frame) then a temporal sub-block (causal over frames)."""

    def __init__(self, hidden: int, heads: int, mlp_hidden: int, qk_norm: bool) -> None:
        super().__init__()
        self.spatial = SubBlock(SpatialAttention(hidden, heads, qk_norm), hidden, mlp_hidden)
        self.temporal = SubBlock(TemporalAttention(hidden, heads, qk_norm), hidden, mlp_hidden)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map to the ``p * p * D`` values of a patch."""

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, :, None].chunk(2, dim=-1)  # (B, T, 1, C)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, T, S, p*p*D)


#################################################################################
#                           Temporal key/value cache                            #
#################################################################################


class TemporalKVCache:
    """Rotated keys and values of the temporal attention of past frames, per layer.

    ``keys[l]`` and ``values[l]`` are ``(B*S, H, F, d)`` for the ``F <= window`` most recent
    frames, at absolute positions ``first_position .. next_position - 1``; older frames are
    dropped (sliding window). A query frame at position ``q`` attends to cached and new frames
    at positions ``q - window .. q``. Filled by :meth:`DiT.append_to_cache`, read by
    :meth:`DiT.forward` with ``cache=``; tensors are never modified in place, so :meth:`clone`
    is a cheap snapshot.
    """

    def __init__(self, num_layers: int, window: int | None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None; got {window}")
        self.num_layers = num_layers
        self.window = window
        self.reset()

    def reset(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.next_position = 0
        self.batch_size: int | None = None
        self.frame_shape: tuple[int, int] | None = None  # (V*N, D) of the input latents
        self.dtype: torch.dtype | None = None  # of the input latents

    @property
    def num_frames(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def first_position(self) -> int:
        return self.next_position - self.num_frames

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return (self.keys[i], self.values[i]) if self.keys else None

    def append(
        self,
        kvs: list[tuple[torch.Tensor, torch.Tensor]],
        num_new: int,
        batch_size: int,
        frame_shape: tuple[int, int],
        dtype: torch.dtype,
    ) -> None:
        """Add ``num_new`` frames' per-layer ``(k, v)`` ``(B*S, H, num_new, d)``, then slide."""
        if len(kvs) != self.num_layers:
            raise ValueError(f"expected K/V of {self.num_layers} layers; got {len(kvs)}")
        keep = self.window
        if self.keys:
            kvs = [
                (torch.cat([k0, k], dim=2), torch.cat([v0, v], dim=2))
                for (k0, v0), (k, v) in zip(
                    zip(self.keys, self.values, strict=True), kvs, strict=True
                )
            ]
        self.keys = [k if keep is None else k[:, :, -keep:] for k, _ in kvs]
        self.values = [v if keep is None else v[:, :, -keep:] for _, v in kvs]
        self.next_position += num_new
        self.batch_size, self.frame_shape, self.dtype = batch_size, frame_shape, dtype

    def replace_rows(self, batch_indices: torch.Tensor, other: TemporalKVCache) -> None:
        """Put ``other``'s episodes in place of episodes ``batch_indices`` (``(k,)`` long).

        Rows are batch-major (``b * S + s``); ``other`` holds ``k`` episodes with the same
        frame positions. Out of place, so clones taken earlier are unaffected.
        """
        if other.num_frames != self.num_frames or other.next_position != self.next_position:
            raise ValueError(
                f"cannot splice a cache at positions [{other.first_position}, {other.next_position}) "
                f"into one at [{self.first_position}, {self.next_position})"
            )
        spatial = self.keys[0].shape[0] // self.batch_size
        rows = (
            batch_indices[:, None] * spatial + torch.arange(spatial, device=batch_indices.device)
        ).reshape(-1)
        rows = rows.to(self.keys[0].device)
        self.keys = [
            k.index_copy(0, rows, ok.to(k.dtype))
            for k, ok in zip(self.keys, other.keys, strict=True)
        ]
        self.values = [
            v.index_copy(0, rows, ov.to(v.dtype))
            for v, ov in zip(self.values, other.values, strict=True)
        ]

    def clone(self) -> TemporalKVCache:
        """A snapshot that later appends to either copy do not affect."""
        other = TemporalKVCache(self.num_layers, self.window)
        other.keys, other.values = list(self.keys), list(self.values)
        other.next_position, other.batch_size = self.next_position, self.batch_size
        other.frame_shape, other.dtype = self.frame_shape, self.dtype
        return other

    def __repr__(self) -> str:
        return (
            f"TemporalKVCache(window={self.window}, frames={self.num_frames}, "
            f"positions=[{self.first_position}, {self.next_position}))"
        )


def temporal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean ``(Tq, Tk)``: key visible iff ``q - window <= k <= q`` (no lower bound if None)."""
    allowed = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed = allowed & (k_pos[None, :] >= q_pos[:, None] - window)
    return allowed


#################################################################################
#                                   The model                                   #
#################################################################################


class DiT(nn.Module):
    """Action-conditioned latent video DiT predicting the flow velocity of every token.

    Conditioning is per frame and additive: ``c_t = MLP(sinusoid(1000 t)) + Linear(action_t)``
    drives the adaLN of every token of frame ``t``. See the module docstring for layouts.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        C, p = cfg.hidden, cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, C, kernel_size=p, stride=p)
        self.t_embedder = TimestepEmbedder(C)
        self.action_embedder = nn.Linear(cfg.action_dim, C)
        self.state_embedder = self.state_tokens = self.state_head = None
        if cfg.state_dim:
            from wm_env.model.state_head import StateHead, StateMap

            self.state_embedder = nn.Linear(cfg.state_dim, C)  # into the adaLN condition
            self.state_tokens = StateMap(cfg.state_dim, cfg.patch_grid, C)  # added to tokens
            self.state_head = StateHead(
                cfg.state_dim, cfg.mean_head_history, cfg.action_dim,
                actions=cfg.state_head_actions,
            )  # fmt: skip
        self.layers = nn.ModuleList(
            [DiTLayer(C, cfg.heads, cfg.mlp_hidden, cfg.qk_norm) for _ in range(cfg.depth)]
        )
        self.final_layer = FinalLayer(C, p * p * cfg.in_channels)
        self.mean_head = None
        if cfg.mean_head_width:
            from wm_env.model.mean_head import MeanHead

            self.mean_head = MeanHead(
                cfg.in_channels,
                cfg.grid,
                cfg.mean_head_history,
                cfg.action_dim,
                cfg.mean_head_width,
                cfg.mean_head_depth,
                state_dim=cfg.state_dim,
                state_map_channels=cfg.state_map_channels,
                anchor=cfg.mean_head_anchor,
            )
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears; N(0, 0.02) embedders; zero adaLN and output, so the model starts at 0."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.action_embedder.weight, std=0.02)
        if self.state_embedder is not None:  # a model grown from one without states starts as it
            from wm_env.model.state_head import StateHead, StateMap

            nn.init.zeros_(self.state_embedder.weight)
            nn.init.zeros_(self.state_embedder.bias)
            for module in self.modules():
                if isinstance(module, (StateMap, StateHead)):
                    nn.init.zeros_(module.net[-1].weight)
                    nn.init.zeros_(module.net[-1].bias)
        for layer in self.layers:
            for block in (layer.spatial, layer.temporal):
                nn.init.zeros_(block.adaLN_modulation[-1].weight)
                nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ----------------------------------------------------------------- helpers

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def new_cache(self, window: int | None = None) -> TemporalKVCache:
        """An empty cache of ``window`` frames, by default ``max_frames - 1`` (the context
        the model was trained with). ``TemporalKVCache(depth, None)`` keeps every frame."""
        if window is None:
            window = max(self.config.max_frames - 1, 1)
        return TemporalKVCache(self.config.depth, window)

    def _num_views(self, x: torch.Tensor) -> int:
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels or x.shape[2] % cfg.tokens_per_view:
            raise ValueError(
                f"x must be (B, T, V*{cfg.tokens_per_view}, {cfg.in_channels}) for grid "
                f"{cfg.grid}; got {tuple(x.shape)}"
            )
        views = x.shape[2] // cfg.tokens_per_view
        if views > cfg.num_views:
            raise ValueError(f"x holds {views} views; this model takes at most {cfg.num_views}")
        return views

    def _check(self, x: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> int:
        views = self._num_views(x)
        B, T = x.shape[:2]
        if tuple(t.shape) != (B, T):
            raise ValueError(f"t must be (B, T) = {(B, T)}; got {tuple(t.shape)}")
        width = self.config.condition_width
        if tuple(actions.shape) != (B, T, width):
            raise ValueError(
                f"actions must be (B, T, condition width) = {(B, T, width)} (the action"
                f"{' and the state' if self.config.state_dim else ''}); got {tuple(actions.shape)}"
            )
        return views

    def patchify(self, x: torch.Tensor, views: int) -> torch.Tensor:
        """``(B, T, V*N, D) -> (B, T, S, C)``."""
        h, w = self.config.grid
        B, T = x.shape[:2]
        x = rearrange(x, "b t (v hh ww) d -> (b t v) d hh ww", v=views, hh=h, ww=w)
        x = self.patch_embed(x)  # (B*T*V, C, h/p, w/p)
        return rearrange(x, "(b t v) c hh ww -> b t (v hh ww) c", b=B, t=T, v=views)

    def unpatchify(self, x: torch.Tensor, views: int) -> torch.Tensor:
        """``(B, T, S, p*p*D) -> (B, T, V*N, D)``."""
        hp, wp = self.config.patch_grid
        p = self.config.patch_size
        return rearrange(
            x, "b t (v hh ww) (p q d) -> b t (v hh p ww q) d", v=views, hh=hp, ww=wp, p=p, q=p
        )

    def condition(self, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Per-frame conditioning ``(B, T, C)`` from times ``(B, T)`` and conditions
        ``(B, T, A [+ S])``; applies action dropout (to the action part) in training mode."""
        p = self.config.action_dropout
        A = self.config.action_dim
        actions, states = actions[..., :A], actions[..., A:]
        if self.training and p > 0:
            drop = torch.rand(actions.shape[0], 1, 1, device=actions.device) < p  # (B, 1, 1)
            null = torch.zeros_like(actions)
            null[..., -1] = 1.0
            actions = torch.where(drop, null, actions)
        c = self.t_embedder(t) + self.action_embedder(actions)
        if self.state_embedder is not None:
            c = c + self.state_embedder(states)
        return c

    # ----------------------------------------------------------------- forward

    def _run(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        actions: torch.Tensor,
        frame_offset: int,
        cache: TemporalKVCache | None,
        window: int | None,
        with_output: bool = True,
    ) -> tuple[torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor]]]:
        cfg = self.config
        views = self._check(x, t, actions)
        T = x.shape[1]
        c = self.condition(t, actions)  # (B, T, C)
        h = self.patchify(x, views)  # (B, T, S, C)
        if self.state_tokens is not None:  # where the state puts the arm, on every token
            states = actions[..., cfg.action_dim :]  # (B, T, S_state)
            grid = self.state_tokens(states)  # (B, T, C, h/p, w/p)
            h = h + rearrange(grid, "b t c hh ww -> b t (hh ww) c").repeat(1, 1, views, 1)
        dev = x.device
        s_rope = spatial_rope(views, cfg.patch_grid, cfg.head_dim, cfg.rope_base, dev)  # (S, d/2)
        q_pos = torch.arange(frame_offset, frame_offset + T, device=dev)  # (T,)
        t_rope = temporal_rope(q_pos, cfg.head_dim, cfg.rope_base)  # (T, d/2)
        mask = None  # None: plain causal attention among the T frames
        if cache is not None and cache.num_frames:
            B, S = h.shape[0], h.shape[2]
            if cache.keys[0].shape[0] != B * S:
                raise ValueError(
                    f"cache holds {cache.keys[0].shape[0]} = B*S sequences; this call has "
                    f"B*S = {B}*{S} (batch size or number of views changed)"
                )
            past_pos = torch.arange(cache.first_position, cache.next_position, device=dev)
            k_pos = torch.cat([past_pos, q_pos])  # (F + T,)
            mask = temporal_mask(q_pos, k_pos, window)  # (T, F + T)
        elif window is not None and window < T - 1:
            mask = temporal_mask(q_pos, q_pos, window)  # (T, T) banded
        kvs = []
        for i, layer in enumerate(self.layers):
            h, _ = layer.spatial(h, c, rope=s_rope)
            past = cache.layer(i) if cache is not None else None
            h, kv = layer.temporal(h, c, rope=t_rope, past=past, mask=mask)
            kvs.append(kv)
        if not with_output:
            return None, kvs
        out = self.final_layer(h, c)  # (B, T, S, p*p*D)
        return self.unpatchify(out, views), kvs

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        actions: torch.Tensor,
        cache: TemporalKVCache | None = None,
        frame_offset: int | None = None,
        window: int | None = None,
    ) -> torch.Tensor:
        """Velocity of every token.

        Args:
            x: ``(B, T, V*N, D)`` latent tokens of T consecutive frames (V <= num_views).
            t: ``(B, T)`` flow time of each frame in [0, 1] (0 data, 1 noise).
            actions: ``(B, T, action_dim)``; ``actions[:, i]`` conditions frame ``i``.
            cache: past frames' temporal keys/values. The new frames attend to them and to
                themselves (causally); the cache is read, never written.
            frame_offset: absolute position of ``x[:, 0]``; default ``cache.next_position``
                with a cache, else 0.
            window: without a cache, let each frame see only the ``window`` frames before it
                (what a sliding-window cache computes); with a cache, ``cache.window`` is used.

        Returns:
            ``(B, T, V*N, D)`` velocity.
        """
        if cache is not None:
            if frame_offset is None:
                frame_offset = cache.next_position
            elif frame_offset < cache.next_position:
                raise ValueError(
                    f"frame_offset {frame_offset} is before the cache's next position "
                    f"{cache.next_position}"
                )
            if window is not None and window != cache.window:
                raise ValueError(f"window {window} differs from the cache's window {cache.window}")
            window = cache.window
        elif x.shape[1] > self.config.max_frames:
            raise ValueError(
                f"{x.shape[1]} frames exceed max_frames {self.config.max_frames}; "
                f"slide a window or use a TemporalKVCache"
            )
        out, _ = self._run(x, t, actions, frame_offset or 0, cache, window)
        return out

    @torch.no_grad()
    def append_to_cache(
        self,
        cache: TemporalKVCache,
        x: torch.Tensor,
        t: torch.Tensor,
        actions: torch.Tensor,
        frame_offset: int | None = None,
    ) -> None:
        """Run frames ``(B, T, V*N, D)`` (clean context, at their context time ``t (B, T)``)
        after the cached ones and store their per-layer temporal keys/values in ``cache``.

        ``frame_offset`` must equal ``cache.next_position`` (the default): frames are appended
        in order.
        """
        if frame_offset is not None and frame_offset != cache.next_position:
            raise ValueError(
                f"frames must be appended in order: frame_offset {frame_offset} != the cache's "
                f"next position {cache.next_position}"
            )
        if cache.num_layers != len(self.layers):
            raise ValueError(f"cache has {cache.num_layers} layers; model has {len(self.layers)}")
        _, kvs = self._run(
            x, t, actions, cache.next_position, cache, cache.window, with_output=False
        )
        cache.append(kvs, x.shape[1], x.shape[0], (x.shape[2], x.shape[3]), x.dtype)

    # ----------------------------------------------------------------- cost model

    def flops_per_frame(
        self,
        context_frames: int,
        *,
        num_views: int = 1,
        num_steps: int = 1,
        cached: bool = True,
    ) -> int:
        """Analytic matmul FLOPs (``2 m n k`` each) to generate ONE frame after
        ``context_frames`` past frames, with ``num_steps`` denoising steps.

        Without a cache every step reprocesses the whole window of ``context_frames + 1``
        frames. With one (as the runtime uses it), one pass over the ``context_frames`` context
        frames fills it, and every denoising step then processes only the new frame (its
        temporal queries attend to ``context_frames + 1`` keys).
        Counts projections, attention scores and values, MLPs, adaLN, embedders, the head and
        the mean head (once per frame); ignores norms, RoPE, softmax and elementwise work.
        """
        cfg = self.config
        C, F_, A = cfg.hidden, cfg.mlp_hidden, cfg.action_dim
        S = num_views * cfg.patch_grid[0] * cfg.patch_grid[1]
        patch_dim = cfg.patch_size**2 * cfg.in_channels
        sub_block_tokens = 2 * C * 3 * C + 2 * C * C + 2 * C * 2 * F_ + 2 * F_ * C
        per_frame = (
            cfg.depth * (2 * S * sub_block_tokens + 2 * 2 * C * 6 * C + 4 * S * S * C)
            + 2 * S * patch_dim * C * 2  # patch embedding and output head
            + 2 * (TIME_EMBED_DIM * C + C * C + A * C)
            + 2 * C * 2 * C  # conditioning, final adaLN
        )

        def temporal(queries_keys: int) -> int:  # scores + weighted values at every position
            return cfg.depth * 4 * S * C * queries_keys

        n = context_frames + 1
        mean = self.mean_head.flops(num_views) if self.mean_head is not None else 0
        if not cached:
            return mean + num_steps * (n * per_frame + temporal(n * (n + 1) // 2))
        k = context_frames
        context_pass = k * per_frame + temporal(k * (k + 1) // 2)
        return mean + context_pass + num_steps * (per_frame + temporal(n))
