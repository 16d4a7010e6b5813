"""The probe judge: a small success classifier on world-model latents of a rollout (works offline).

Recipe (``RECIPE.md``, success probe): ``num_frames`` (8) frames sampled uniformly over the
episode, first and last included; each frame encoded by the bundle's frozen encoder (+ adapter)
into latents ``(L, D)``, normalised per channel with the training set's statistics; a per-token
linear map to ``token_dim`` then a linear map of the flattened frame to ``hidden`` gives one
token per frame (plus a learned position per sampled frame); a CLS token goes first; one
transformer layer; a linear head on the CLS output gives the success logit (BCE in training:
``wmgym train probe``, :mod:`train.stage_probe`).

The instruction: the probe reads the task FAMILY from it (``lift``, ``stack``, ``push``,
``place``, parsed from our instruction templates by :func:`wm_env.instructions.parse_instruction`)
as a learned embedding added to the CLS token. It does not read colours or directions: which
cube, which bin and which way to push must come from the frames (the training data pairs each
layout with its own instruction). An instruction that is not one of our templates (a paraphrase,
a user's) gets the ``unknown`` family embedding, which training also sees (family dropout).
With ``use_family=False`` the instruction is ignored altogether.

A probe directory is written with the bundle API (:func:`wm_env.bundle.write_component`):
``config.json`` (section ``probe``: architecture, latent statistics, training provenance and
the SHA-256 of the encoder weights it was trained on) + ``probe.safetensors``. The encoder is
not copied: the section names the bundle it came from (relative to the probe directory), and
loading refuses a bundle whose encoder or adapter weights differ.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from judges.base import Verdict, check_judge_input

FAMILIES = ("unknown", "lift", "stack", "push", "place")  # index 0: not one of our templates
PROBE_SECTION = "probe"


def family_index(instruction: str) -> int:
    """Index into :data:`FAMILIES` of an instruction's task family (0 when it is not a template)."""
    from wm_env.instructions import parse_instruction

    parsed = parse_instruction(instruction)
    return FAMILIES.index(parsed[0]) if parsed is not None and parsed[0] in FAMILIES else 0


def uniform_frame_indices(num_frames: int, count: int) -> np.ndarray:
    """int64 ``(count,)``: ``count`` frames spread evenly over ``0..num_frames - 1``, ends included.

    Shorter episodes repeat frames (the probe always sees ``count`` tokens).
    """
    if num_frames < 1 or count < 1:
        raise ValueError(f"need num_frames >= 1 and count >= 1; got {num_frames}, {count}")
    return np.round(np.linspace(0, num_frames - 1, count)).astype(np.int64)


@dataclass(frozen=True)
class ProbeConfig:
    """Architecture of the success probe.

    Attributes:
        num_frames: frames sampled per episode (uniformly, first and last included).
        token_dim: per-token width after the first linear map (keeps big latent grids cheap).
        hidden: transformer width.
        heads: attention heads.
        layers: transformer layers (the recipe: 1).
        dropout: dropout in the transformer and before the head.
        use_family: condition on the task family parsed from the instruction.
    """

    num_frames: int = 8
    token_dim: int = 16
    hidden: int = 128
    heads: int = 4
    layers: int = 1
    dropout: float = 0.1
    use_family: bool = True

    def __post_init__(self) -> None:
        if min(self.num_frames, self.token_dim, self.hidden, self.heads, self.layers) < 1:
            raise ValueError(f"probe sizes must be >= 1; got {self}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")


class SuccessProbe(nn.Module):
    """Latents of sampled frames ``(B, F, L, D)`` and family ids ``(B,)`` -> success logits ``(B,)``."""

    def __init__(self, config: ProbeConfig, tokens: int, channels: int) -> None:
        super().__init__()
        self.config, self.tokens, self.channels = config, tokens, channels
        self.token_proj = nn.Linear(channels, config.token_dim)  # per latent token
        self.frame_proj = nn.Sequential(
            nn.LayerNorm(tokens * config.token_dim),
            nn.Linear(tokens * config.token_dim, config.hidden),
        )
        self.position = nn.Parameter(torch.zeros(1, config.num_frames, config.hidden))
        self.cls = nn.Parameter(torch.zeros(1, 1, config.hidden))
        self.family = nn.Embedding(len(FAMILIES), config.hidden)
        layer = nn.TransformerEncoderLayer(
            config.hidden,
            config.heads,
            dim_feedforward=4 * config.hidden,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(
            nn.LayerNorm(config.hidden), nn.Dropout(config.dropout), nn.Linear(config.hidden, 1)
        )
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        nn.init.zeros_(self.family.weight)

    def forward(self, latents: torch.Tensor, family: torch.Tensor) -> torch.Tensor:
        batch, frames = latents.shape[:2]
        if latents.shape[2:] != (self.tokens, self.channels) or frames != self.config.num_frames:
            raise ValueError(
                f"probe expects latents (B, {self.config.num_frames}, {self.tokens}, {self.channels}); got {tuple(latents.shape)}"
            )
        x = self.token_proj(latents).flatten(2)  # (B, F, L * token_dim)
        x = self.frame_proj(x) + self.position  # (B, F, hidden)
        cls = self.cls.expand(batch, -1, -1)  # (B, 1, hidden)
        if self.config.use_family:
            cls = cls + self.family(family)[:, None]
        x = self.transformer(torch.cat([cls, x], dim=1))  # (B, 1 + F, hidden)
        return self.head(x[:, 0]).squeeze(-1)  # (B,)


class ProbeJudge:
    """Judges uint8 frames with a trained probe (encoding them with its bundle's encoder).

    Use :meth:`from_pretrained`. ``threshold`` on ``p(success)`` decides (0.5 by default).

    Attributes:
        name: ``probe:<probe directory name>``.
        prompt_hash: empty (a probe asks no question).
    """

    prompt_hash = ""

    def __init__(
        self,
        probe: SuccessProbe,
        encoder,
        adapter,
        latent_mean: torch.Tensor,
        latent_std: torch.Tensor,
        name: str = "probe",
        threshold: float = 0.5,
        device: str | torch.device = "cpu",
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1); got {threshold}")
        self.device = torch.device(device)
        self.probe = probe.to(self.device).eval().requires_grad_(False)
        self.encoder, self.adapter = encoder, adapter
        self.latent_mean = latent_mean.to(self.device)  # (D,)
        self.latent_std = latent_std.to(self.device)  # (D,)
        self.name, self.threshold = name, threshold
        self.last_seconds = 0.0

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        bundle: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        threshold: float | None = None,
    ) -> ProbeJudge:
        """Load a probe directory and its bundle's encoder (``bundle`` overrides the recorded one).

        Raises:
            BundleError: not a probe directory, or the bundle's encoder/adapter weights are not
                the ones the probe was trained on.
        """
        from wm_env.bundle import (
            BundleError,
            latent_space_hashes,
            load_weights,
            read_config,
            verify,
        )
        from wm_env.world_model import build_adapter_from_config, build_encoder_from_config

        root = Path(path)
        config = verify(root)
        if PROBE_SECTION not in config:
            raise BundleError(f"{root} holds no success probe (train one with `wmgym train probe`)")
        section = config[PROBE_SECTION]
        source = Path(bundle) if bundle is not None else (root / section["encoder_bundle"])
        bundle_config = read_config(source)
        if latent_space_hashes(bundle_config) != section["encoder_sha256"]:
            raise BundleError(
                f"{root} was trained on other encoder/adapter weights than {source} holds; "
                f"retrain it (`wmgym train probe --bundle {source} --out {root}`)"
            )
        probe = SuccessProbe(
            ProbeConfig(**section["config"]), section["tokens"], section["channels"]
        )
        probe.load_state_dict(load_weights(root, config, PROBE_SECTION))
        return cls(
            probe,
            build_encoder_from_config(bundle_config, source, device),
            build_adapter_from_config(bundle_config, source, device),
            torch.tensor(section["latent_mean"]),
            torch.tensor(section["latent_std"]),
            name=f"probe:{root.resolve().name}",
            threshold=section.get("threshold", 0.5) if threshold is None else threshold,
            device=device,
        )

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames ``(N, H, W, 3)`` -> normalised latents ``(N, L, D)``."""
        images = torch.as_tensor(np.ascontiguousarray(frames), device=self.device)
        latents = self.adapter.encode(self.encoder.encode(images)).float()
        return (latents - self.latent_mean) / self.latent_std

    @torch.no_grad()
    def probability(self, latents: torch.Tensor, family: torch.Tensor) -> torch.Tensor:
        """``p(success)`` ``(B,)`` from normalised latents of the sampled frames ``(B, F, L, D)``."""
        return torch.sigmoid(self.probe(latents.to(self.device), family.to(self.device)))

    def judge(self, frames: np.ndarray, instruction: str) -> Verdict:
        """The probe's verdict on frames ``(T, H, W, 3)`` (only the sampled ``F`` are encoded)."""
        frames = check_judge_input(frames, instruction)
        start = time.perf_counter()
        shown = uniform_frame_indices(len(frames), self.probe.config.num_frames)
        family = family_index(instruction) if self.probe.config.use_family else 0
        latents = self.encode(frames[shown])[None]  # (1, F, L, D)
        p = float(self.probability(latents, torch.tensor([family]))[0])
        self.last_seconds = time.perf_counter() - start
        rationale = f"probe p(success) {p:.3f} on {len(shown)} of {len(frames)} frames"
        if self.probe.config.use_family:
            rationale += f"; family {FAMILIES[family]}"
        return Verdict(p >= self.threshold, p, rationale)


def probe_section(
    probe: SuccessProbe,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    encoder_bundle: str,
    encoder_sha256: list[str],
    **provenance: Any,
) -> dict[str, Any]:
    """The ``probe`` section of a probe directory's ``config.json``."""
    from wm_env.bundle import json_ready

    return json_ready(
        {
            "config": asdict(probe.config),
            "tokens": probe.tokens,
            "channels": probe.channels,
            "families": list(FAMILIES),
            "latent_mean": latent_mean.tolist(),
            "latent_std": latent_std.tolist(),
            "threshold": 0.5,
            "encoder_bundle": encoder_bundle,
            "encoder_sha256": encoder_sha256,
            **provenance,
        }
    )
