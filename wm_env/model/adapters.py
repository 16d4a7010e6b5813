"""Adapters between an encoder's feature tokens and the world model's latent tokens.

An adapter maps encoder features ``(B, N, D_in)`` to the latents the dynamics model works on
``(B, N, D_out)`` and back. It is trained first on frozen encoder features, then frozen
(:meth:`Adapter.freeze`) while the dynamics model trains on its latents.

- ``identity``: latents are the features (e.g. for the VAE, whose latents are already small).
- ``mlp``: per-token MLP ``D_in -> D_out`` (Linear, GELU, Linear, GELU, Linear) and a mirrored
  inverse MLP, trained as an autoencoder on the features.
- ``svae``: the S-VAE of the semantic world-model paper. Encoder: ``num_layers`` (3) pre-LN
  transformer blocks at the feature width, LayerNorm, Linear to ``2 * latent_dim`` (mean,
  log-variance; default ``latent_dim`` 96). Decoder mirrors it: Linear ``latent_dim -> D_in``,
  ``num_layers`` blocks, LayerNorm (the reference ends there; ``decoder_out_linear=True`` adds
  a Linear after it, for features that are not layer-normalised such as CNN activations).
  Loss: feature MSE + ``cos_weight * (1 - cosine)`` + ``kl_weight(step) * KL``, the KL weight
  (1e-4) ramping linearly from 0 over the first 20% of the steps; KL is the mean over tokens
  and latent channels of KL(q || N(0, I)).

Shapes: any leading dims are allowed, ``(..., N, D)``; the token axis ``N`` is the one the
transformer blocks attend over (no position embedding is added: encoder features carry
their position).

All adapters: ``encode(features) -> latents`` (deterministic: the mean for the S-VAE),
``encode_dist(features) -> (mean, logvar | None)``, ``decode(latents) -> features``,
``loss(features, step, total_steps) -> dict`` with ``loss`` to backprop and its terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wm_env.errors import lookup

__all__ = [
    "ADAPTERS",
    "Adapter",
    "IdentityAdapter",
    "MLPAdapter",
    "MLPAdapterConfig",
    "SVAEAdapter",
    "SVAEConfig",
    "TransformerBlock",
    "build_adapter",
    "feature_reconstruction_terms",
    "kl_warmup_weight",
    "register_adapter",
]


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------


def kl_warmup_weight(
    step: int, total_steps: int, target: float = 1e-4, warmup_fraction: float = 0.2
) -> float:
    """KL weight at ``step``: linear ramp from 0 to ``target`` over ``warmup_fraction * total_steps``.

    ``target * min(1, step / (warmup_fraction * total_steps))``; ``target`` throughout when the
    warm-up is shorter than one step.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = int(warmup_fraction * total_steps)
    if warmup <= 0:
        return float(target)
    return float(target) * min(1.0, max(step, 0) / warmup)


def feature_reconstruction_terms(
    features: torch.Tensor, recon: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mse, 1 - cosine)``: element-mean squared error and mean per-token cosine distance."""
    mse = F.mse_loss(recon, features)
    cos = F.cosine_similarity(recon.flatten(0, -2), features.flatten(0, -2), dim=-1).mean()
    return mse, 1.0 - cos


def _auto_heads(width: int, head_dim: int = 64) -> int:
    """Divisor of ``width`` closest to ``width / head_dim`` (at least 1)."""
    want = max(1, round(width / head_dim))
    divisors = [h for h in range(1, width + 1) if width % h == 0]
    return min(divisors, key=lambda h: (abs(h - want), h))


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU MLP)."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, D) -> (B, N, D)``, bidirectional attention over the N tokens."""
        b, n, d = x.shape
        h = self.num_heads
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=p)  # (B, h, N, d/h)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class Adapter(nn.Module):
    """Base class: features ``(..., N, in_dim)`` <-> latents ``(..., N, latent_dim)``."""

    def __init__(self, in_dim: int, latent_dim: int) -> None:
        super().__init__()
        self._in_dim = int(in_dim)
        self._latent_dim = int(latent_dim)
        self._frozen = False

    @property
    def in_dim(self) -> int:
        """Feature width D_in."""
        return self._in_dim

    @property
    def latent_dim(self) -> int:
        """Latent width D_out."""
        return self._latent_dim

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` was called."""
        return self._frozen

    def freeze(self) -> Adapter:
        """No grads, eval mode for good (for dynamics training on its latents)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        super().train(False)
        return self

    def train(self, mode: bool = True) -> Adapter:
        """Like ``nn.Module.train``, but a frozen adapter stays in eval mode."""
        return super().train(False if self._frozen else mode)

    def encode_dist(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mean, logvar)`` of the latent; ``logvar`` is None for deterministic adapters."""
        return self.encode(features), None

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Features ``(..., N, in_dim)`` -> latents ``(..., N, latent_dim)`` (deterministic)."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(..., N, latent_dim)`` -> features ``(..., N, in_dim)``."""
        raise NotImplementedError

    def loss(
        self, features: torch.Tensor, step: int = 0, total_steps: int = 1
    ) -> dict[str, torch.Tensor]:
        """Training loss on a batch of features; ``loss`` is the total to backprop."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(features)

    def _check(self, x: torch.Tensor, width: int, what: str) -> None:
        if x.ndim < 2 or x.shape[-1] != width:
            raise ValueError(f"{what} must be (..., N, {width}), got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, latent_dim={self.latent_dim}, frozen={self.frozen}"


# ----------------------------------------------------------------------------------------------
# identity / mlp
# ----------------------------------------------------------------------------------------------


class IdentityAdapter(Adapter):
    """Latents are the features; nothing to train (its loss is a constant 0)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim, in_dim)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        self._check(features, self.in_dim, "features")
        return features

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check(latents, self.latent_dim, "latents")
        return latents

    def loss(
        self, features: torch.Tensor, step: int = 0, total_steps: int = 1
    ) -> dict[str, torch.Tensor]:
        return {"loss": features.new_zeros(())}


@dataclass(frozen=True)
class MLPAdapterConfig:
    """Per-token MLP adapter: ``in_dim -> hidden -> hidden -> latent_dim`` and the mirror.

    ``hidden_dim`` defaults to ``(in_dim + latent_dim) // 2``.
    """

    in_dim: int
    latent_dim: int = 96
    hidden_dim: int | None = None
    cos_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.in_dim < 1 or self.latent_dim < 1:
            raise ValueError(
                f"in_dim and latent_dim must be >= 1, got {self.in_dim}, {self.latent_dim}"
            )
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {self.hidden_dim}")
        if self.cos_weight < 0:
            raise ValueError(f"cos_weight must be >= 0, got {self.cos_weight}")

    @property
    def hidden(self) -> int:
        """The hidden width actually used."""
        return self.hidden_dim or max(1, (self.in_dim + self.latent_dim) // 2)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.GELU(),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Linear(hidden, d_out),
    )


class MLPAdapter(Adapter):
    """Per-token MLP and its inverse MLP, trained as an autoencoder (MSE + 1 - cosine)."""

    def __init__(self, config: MLPAdapterConfig) -> None:
        super().__init__(config.in_dim, config.latent_dim)
        self.config = config
        self.encoder = _mlp(config.in_dim, config.hidden, config.latent_dim)
        self.decoder = _mlp(config.latent_dim, config.hidden, config.in_dim)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        self._check(features, self.in_dim, "features")
        return self.encoder(features)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check(latents, self.latent_dim, "latents")
        return self.decoder(latents)

    def loss(
        self, features: torch.Tensor, step: int = 0, total_steps: int = 1
    ) -> dict[str, torch.Tensor]:
        recon = self.decode(self.encode(features))
        mse, cos = feature_reconstruction_terms(features, recon)
        total = mse + self.config.cos_weight * cos
        return {"loss": total, "mse": mse.detach(), "cos": cos.detach()}


# ----------------------------------------------------------------------------------------------
# S-VAE
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SVAEConfig:
    """S-VAE adapter configuration (defaults: the paper's recipe).

    Attributes:
        in_dim: feature width of the encoder it adapts (e.g. 768 for SigLIP-B).
        latent_dim: latent width (96).
        num_layers: transformer blocks in the encoder and in the decoder (3 each).
        num_heads: attention heads; ``None`` picks the divisor of ``in_dim`` closest to
            ``in_dim / 64``.
        mlp_ratio: MLP hidden width / ``in_dim`` in the blocks.
        kl_weight: final KL weight (1e-4).
        kl_warmup_fraction: share of the steps over which the KL weight ramps up from 0 (0.2).
        cos_weight: weight of ``1 - cosine`` in the reconstruction loss (1).
        logvar_clamp: log-variance is clamped to ``[-logvar_clamp, logvar_clamp]`` for stability.
        decoder_out_linear: add a Linear after the decoder's final LayerNorm (not in the
            reference; for features that are not layer-normalised).
    """

    in_dim: int
    latent_dim: int = 96
    num_layers: int = 3
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    kl_weight: float = 1e-4
    kl_warmup_fraction: float = 0.2
    cos_weight: float = 1.0
    logvar_clamp: float = 30.0
    decoder_out_linear: bool = False

    def __post_init__(self) -> None:
        if self.in_dim < 1 or self.latent_dim < 1:
            raise ValueError(
                f"in_dim and latent_dim must be >= 1, got {self.in_dim}, {self.latent_dim}"
            )
        if self.num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {self.num_layers}")
        if self.num_heads is not None and (self.num_heads < 1 or self.in_dim % self.num_heads):
            raise ValueError(
                f"num_heads {self.num_heads} must be >= 1 and divide in_dim {self.in_dim}"
            )
        if self.mlp_ratio <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(
                f"need mlp_ratio > 0 and 0 <= dropout < 1, got {self.mlp_ratio}, {self.dropout}"
            )
        if self.kl_weight < 0 or self.cos_weight < 0 or not 0 <= self.kl_warmup_fraction <= 1:
            raise ValueError("need kl_weight >= 0, cos_weight >= 0, 0 <= kl_warmup_fraction <= 1")
        if self.logvar_clamp <= 0:
            raise ValueError(f"logvar_clamp must be > 0, got {self.logvar_clamp}")

    @property
    def heads(self) -> int:
        """The number of attention heads actually used."""
        return self.num_heads or _auto_heads(self.in_dim)


class SVAEAdapter(Adapter):
    """Semantic VAE: transformer encoder to a diagonal Gaussian latent, mirrored decoder."""

    def __init__(self, config: SVAEConfig) -> None:
        super().__init__(config.in_dim, config.latent_dim)
        self.config = config
        d, heads = config.in_dim, config.heads

        def blocks() -> nn.ModuleList:
            return nn.ModuleList(
                TransformerBlock(d, heads, config.mlp_ratio, config.dropout)
                for _ in range(config.num_layers)
            )

        self.enc_blocks = blocks()
        self.enc_norm = nn.LayerNorm(d, eps=1e-6)
        self.enc_proj = nn.Linear(d, 2 * config.latent_dim)
        self.dec_proj = nn.Linear(config.latent_dim, d)
        self.dec_blocks = blocks()
        self.dec_norm = nn.LayerNorm(d, eps=1e-6)
        self.dec_out = nn.Linear(d, d) if config.decoder_out_linear else nn.Identity()

    @staticmethod
    def _flat(x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        """``(..., N, D) -> (prod(...), N, D)`` and the leading shape."""
        lead = x.shape[:-2]
        return x.reshape(-1, *x.shape[-2:]), lead

    def encode_dist(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(..., N, in_dim)`` -> ``(mean, logvar)``, each ``(..., N, latent_dim)``."""
        self._check(features, self.in_dim, "features")
        x, lead = self._flat(features)
        for blk in self.enc_blocks:
            x = blk(x)
        stats = self.enc_proj(self.enc_norm(x))  # (B', N, 2 latent)
        mean, logvar = stats.chunk(2, dim=-1)
        c = self.config.logvar_clamp
        logvar = logvar.clamp(-c, c)
        n = features.shape[-2]
        return mean.reshape(*lead, n, -1), logvar.reshape(*lead, n, -1)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Deterministic latents: the posterior mean ``(..., N, latent_dim)``."""
        return self.encode_dist(features)[0]

    def sample(self, features: torch.Tensor) -> torch.Tensor:
        """A reparameterised posterior sample ``mean + exp(logvar / 2) * eps``."""
        mean, logvar = self.encode_dist(features)
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(..., N, latent_dim)`` -> features ``(..., N, in_dim)``."""
        self._check(latents, self.latent_dim, "latents")
        x, lead = self._flat(latents)
        x = self.dec_proj(x)
        for blk in self.dec_blocks:
            x = blk(x)
        x = self.dec_out(self.dec_norm(x))
        return x.reshape(*lead, latents.shape[-2], self.in_dim)

    def kl_weight_at(self, step: int, total_steps: int) -> float:
        """KL weight of this config at ``step`` of ``total_steps`` (see :func:`kl_warmup_weight`)."""
        c = self.config
        return kl_warmup_weight(step, total_steps, c.kl_weight, c.kl_warmup_fraction)

    def loss(
        self, features: torch.Tensor, step: int = 0, total_steps: int = 1, sample: bool = True
    ) -> dict[str, torch.Tensor]:
        """S-VAE loss: ``mse + cos_weight * (1 - cos) + kl_weight(step) * kl``.

        The decoder sees a posterior sample (the mean if ``sample=False``).

        Returns:
            dict of scalar tensors: ``loss`` (to backprop), ``mse``, ``cos`` (1 - cosine),
            ``kl`` and ``kl_weight`` (detached).
        """
        mean, logvar = self.encode_dist(features)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample else mean
        recon = self.decode(z)
        mse, cos = feature_reconstruction_terms(features, recon)
        kl = -0.5 * torch.mean(1.0 + logvar - mean.pow(2) - logvar.exp())
        w = self.kl_weight_at(step, total_steps)
        total = mse + self.config.cos_weight * cos + w * kl
        return {
            "loss": total,
            "mse": mse.detach(),
            "cos": cos.detach(),
            "kl": kl.detach(),
            "kl_weight": torch.tensor(w),
        }


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


def _build_identity(in_dim: int) -> IdentityAdapter:
    return IdentityAdapter(in_dim)


def _build_mlp(in_dim: int, **options: Any) -> MLPAdapter:
    return MLPAdapter(MLPAdapterConfig(in_dim=in_dim, **options))


def _build_svae(in_dim: int, **options: Any) -> SVAEAdapter:
    return SVAEAdapter(SVAEConfig(in_dim=in_dim, **options))


ADAPTERS: dict[str, Callable[..., Adapter]] = {
    "identity": _build_identity,
    "mlp": _build_mlp,
    "svae": _build_svae,
}


def register_adapter(name: str, builder: Callable[..., Adapter], overwrite: bool = False) -> None:
    """Add an adapter builder ``builder(in_dim, **options) -> Adapter`` to :data:`ADAPTERS`."""
    if name in ADAPTERS and not overwrite:
        raise ValueError(f"adapter {name!r} is already registered")
    ADAPTERS[name] = builder


def build_adapter(name: str, in_dim: int, **options: Any) -> Adapter:
    """Build a registered adapter for features of width ``in_dim``.

    Options are the fields of :class:`MLPAdapterConfig` / :class:`SVAEConfig` (``identity``
    takes none). Unknown names raise ``UnknownNameError`` with a "did you mean" suggestion.
    """
    return lookup("adapter", name, ADAPTERS)(in_dim, **options)
