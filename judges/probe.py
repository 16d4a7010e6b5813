"""The probe judge: a small success classifier on world-model latents of a rollout (works offline).

Recipe (``RECIPE.md``, success probe): ``num_frames`` (8) frames sampled uniformly over the
episode, first and last included; each frame encoded by the bundle's frozen encoder (+ adapter)
into latents ``(L, D)`` on its ``(h, w)`` grid, normalised per channel with the training set's
statistics; a small frame encoder (two 3x3 convolutions over the grid, the second with stride
2, then a linear map; or a per-token linear map, flattened) gives one token per frame, plus a
learned position per sampled frame; a CLS token goes first; one transformer layer; a linear
head on the CLS output gives the success logit (BCE in training: ``wmgym train probe``,
:mod:`train.stage_probe`, which also supervises each frame's output with the success predicate
at that frame).

The instruction: the probe reads it through our instruction templates
(:func:`wm_env.instructions.parse_instruction`) as slots: the task family (``lift``, ``stack``,
``push``, ``place``), the colour of the cube to act on, the second colour (the base cube of a
stack, the bin of a place) and the push direction. Each slot value has a learned embedding; their
sum is added to the CLS token and to every frame token. Slots matter: a quarter to a half of the
failures in the data are the expert acting on the wrong cube or in the wrong direction, which
look like successes without them. An instruction that is not one of our templates (a
paraphrase, a user's) gets ``none`` in every slot, which training also sees (instruction
dropout). ``instruction="family"`` keeps only the family slot; ``"none"`` ignores the
instruction altogether.

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

from judges.base import Verdict, check_instruction, check_judge_input

PROBE_SECTION = "probe"
FRAME_ENCODERS = ("conv", "linear")
INSTRUCTION_MODES = ("slots", "family", "none")
INPUTS = ("frames", "latents")
# Slot vocabularies; index 0 ("none") is a missing slot or an instruction that is no template.
FAMILIES = ("none", "lift", "stack", "push", "place")
COLORS = ("none", "red", "green", "blue", "yellow")  # wm_env.sim.tasks.TASK_COLORS
DIRECTIONS = ("none", "left", "right", "front", "back")
SLOTS = {"family": FAMILIES, "color": COLORS, "color2": COLORS, "direction": DIRECTIONS}


def instruction_ids(instruction: str, mode: str = "slots") -> np.ndarray:
    """int64 ``(4,)``: indices of the family, colour, second colour and direction slots.

    Slots an instruction does not fill, and every slot of an instruction that is not one of our
    templates, are 0 (``none``); ``mode="family"`` keeps only the family, ``"none"`` nothing.
    """
    from wm_env.instructions import parse_instruction

    ids = np.zeros(len(SLOTS), np.int64)
    parsed = parse_instruction(instruction) if mode != "none" else None
    if parsed is None:
        return ids
    family, slots = parsed
    values = {"family": family, "color": slots.get("c"), "color2": slots.get("c2"),
              "direction": slots.get("dir")}  # fmt: skip
    for i, (slot, vocab) in enumerate(SLOTS.items()):
        if (slot == "family" or mode == "slots") and values[slot] in vocab:
            ids[i] = vocab.index(values[slot])
    return ids


def describe_instruction_ids(ids) -> str:
    """``family=push color=red direction=left`` (slots that are ``none`` left out)."""
    pairs = zip(SLOTS.items(), ids, strict=True)
    words = [f"{slot}={vocab[int(i)]}" for (slot, vocab), i in pairs if int(i)]
    return " ".join(words) or "no instruction slots"


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
        frame_encoder: how a frame's latent grid becomes one token: ``conv`` (two 3x3 convs,
            the second with stride 2, then a linear map: few weights, shared over positions) or
            ``linear`` (a per-token linear map to ``token_dim``, flattened, then a linear map).
        token_dim: channels of the frame encoder (per-token width for ``linear``).
        hidden: transformer width.
        heads: attention heads.
        layers: transformer layers (the recipe: 1).
        dropout: dropout in the transformer and before the head.
        instruction: ``slots`` (family, colours, direction), ``family`` or ``none`` (ignore it).
    """

    num_frames: int = 8
    frame_encoder: str = "conv"
    token_dim: int = 16
    hidden: int = 128
    heads: int = 4
    layers: int = 1
    dropout: float = 0.1
    instruction: str = "slots"

    def __post_init__(self) -> None:
        if min(self.num_frames, self.token_dim, self.hidden, self.heads, self.layers) < 1:
            raise ValueError(f"probe sizes must be >= 1; got {self}")
        if self.instruction not in INSTRUCTION_MODES:
            from wm_env.errors import lookup

            lookup("instruction mode", self.instruction, dict.fromkeys(INSTRUCTION_MODES))
        if self.frame_encoder not in FRAME_ENCODERS:
            from wm_env.errors import lookup

            lookup("frame encoder", self.frame_encoder, dict.fromkeys(FRAME_ENCODERS))
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")


class FrameEncoder(nn.Module):
    """One frame's latents ``(N, L, D)`` on an ``(h, w)`` grid -> one token ``(N, hidden)``."""

    def __init__(self, kind: str, grid: tuple[int, int], channels: int, width: int, hidden: int):
        super().__init__()
        self.kind, self.grid = kind, grid
        tokens = grid[0] * grid[1]
        if kind == "conv":
            self.net = nn.Sequential(
                nn.Conv2d(channels, width, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(width, width, 3, stride=2, padding=1),
                nn.GELU(),
            )
            out = width * ((grid[0] + 1) // 2) * ((grid[1] + 1) // 2)
        else:
            self.net = nn.Linear(channels, width)  # per latent token
            out = tokens * width
        self.proj = nn.Sequential(nn.LayerNorm(out), nn.Linear(out, hidden))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv":
            x = latents.transpose(1, 2).unflatten(2, self.grid)  # (N, D, h, w)
            x = self.net(x).flatten(1)  # (N, width * h/2 * w/2)
        else:
            x = self.net(latents).flatten(1)  # (N, L * width)
        return self.proj(x)


class SuccessProbe(nn.Module):
    """Latents ``(B, F, L, D)`` of sampled frames and instruction ids ``(B, 4)`` -> logits ``(B,)``.

    ``forward(..., per_frame=True)`` also returns per-frame logits ``(B, F)`` (training's
    auxiliary loss: the success predicate at each sampled frame).
    """

    def __init__(self, config: ProbeConfig, grid: tuple[int, int], channels: int) -> None:
        super().__init__()
        self.config, self.grid, self.channels = config, tuple(grid), channels
        self.tokens = self.grid[0] * self.grid[1]
        self.frame = FrameEncoder(
            config.frame_encoder, self.grid, channels, config.token_dim, config.hidden
        )
        self.position = nn.Parameter(torch.zeros(1, config.num_frames, config.hidden))
        self.cls = nn.Parameter(torch.zeros(1, 1, config.hidden))
        self.slots = nn.ModuleList(nn.Embedding(len(v), config.hidden) for v in SLOTS.values())
        layer = nn.TransformerEncoderLayer(
            config.hidden,
            config.heads,
            dim_feedforward=4 * config.hidden,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.hidden)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.hidden, 1))
        self.frame_head = nn.Linear(config.hidden, 1)
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        for embedding in self.slots:
            nn.init.zeros_(embedding.weight)

    def forward(self, latents: torch.Tensor, instruction: torch.Tensor, per_frame: bool = False):
        batch, frames = latents.shape[:2]
        if latents.shape[2:] != (self.tokens, self.channels) or frames != self.config.num_frames:
            raise ValueError(
                f"probe expects latents (B, {self.config.num_frames}, {self.tokens}, {self.channels}); got {tuple(latents.shape)}"
            )
        x = self.frame(latents.flatten(0, 1)).unflatten(0, (batch, frames))  # (B, F, hidden)
        cond = sum(emb(instruction[:, i]) for i, emb in enumerate(self.slots))  # (B, hidden)
        x = x + self.position + cond[:, None]
        cls = self.cls + cond[:, None]  # (B, 1, hidden)
        x = self.norm(self.transformer(torch.cat([cls, x], dim=1)))  # (B, 1 + F, hidden)
        logits = self.head(x[:, 0]).squeeze(-1)  # (B,)
        if per_frame:
            return logits, self.frame_head(x[:, 1:]).squeeze(-1)  # (B,), (B, F)
        return logits


class ProbeJudge:
    """Judges uint8 frames with a trained probe (encoding them with its bundle's encoder).

    Use :meth:`from_pretrained`. ``threshold`` on ``p(success)`` decides (0.5 by default).

    ``inputs="latents"``: a world-model video that carries its latents (``raw_latents`` and
    ``latent_space``, as the leaderboard's lazily decoded videos do) is judged on the world
    model's own latents of the sampled frames when they are in the probe's latent space, instead
    of decoding those frames and encoding them again; pixel videos (the sim's, or a world model
    with another encoder) are still encoded. It saves a decode and an encode per sampled frame,
    but the probe then reads the model's predicted latents where it was trained on encoded frames,
    so its verdicts can differ: the README's agreement section measures both.

    Attributes:
        name: ``probe:<probe directory name>``, with ``+latents`` when it reads latents.
        prompt_hash: the SHA-256 of the probe's weights. A probe asks no question; its weights
            decide its verdicts, so results (and resumed runs) tell two probes of one name apart.
    """

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
        weights_sha256: str = "",
        inputs: str = "frames",
        latent_space: list[str] | None = None,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1); got {threshold}")
        if inputs not in INPUTS:
            from wm_env.errors import lookup

            lookup("probe inputs", inputs, dict.fromkeys(INPUTS))
        self.device = torch.device(device)
        self.probe = probe.to(self.device).eval().requires_grad_(False)
        self.encoder, self.adapter = encoder, adapter
        self.latent_mean = latent_mean.to(self.device)  # (D,)
        self.latent_std = latent_std.to(self.device)  # (D,)
        self.inputs = inputs
        self.latent_space = list(latent_space or [])  # encoder/adapter SHA-256 of the latents
        self.name = name + ("+latents" if inputs == "latents" else "")
        self.threshold = threshold
        self.prompt_hash = weights_sha256
        self.last_seconds = 0.0

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        bundle: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        threshold: float | None = None,
        inputs: str | None = None,
    ) -> ProbeJudge:
        """Load a probe directory and its bundle's encoder (``bundle`` overrides the recorded one).

        ``inputs``: ``frames`` (encode the sampled frames) or ``latents`` (read a world-model
        video's own latents where it has them; see the class docstring). None: the way its
        world-model replays were given to it in training (``frames`` for a probe without any).

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
        vocabularies = {slot: list(vocab) for slot, vocab in SLOTS.items()}
        if section.get("vocabularies") != vocabularies:
            raise BundleError(
                f"{root}: the probe's instruction vocabularies {section.get('vocabularies')} are not this "
                f"wm-gym's {vocabularies}; retrain it"
            )
        probe = SuccessProbe(ProbeConfig(**section["config"]), section["grid"], section["channels"])
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
            weights_sha256=config["files"][section["weights"]]["sha256"],
            inputs=inputs or section.get("replays", {}).get("inputs", "frames"),
            latent_space=section["encoder_sha256"],
        )

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames ``(N, H, W, 3)`` -> normalised latents ``(N, L, D)``."""
        images = torch.as_tensor(np.ascontiguousarray(frames), device=self.device)
        return self.normalize(self.adapter.encode(self.encoder.encode(images)))

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """The encoder's own latents ``(N, L, D)`` -> the probe's normalised inputs."""
        return (latents.to(self.device).float() - self.latent_mean) / self.latent_std

    def reads_latents_of(self, frames) -> bool:
        """Whether :meth:`judge` would read ``frames``' latents rather than encode its pixels."""
        return (
            self.inputs == "latents"
            and hasattr(frames, "raw_latents")
            and list(getattr(frames, "latent_space", [])) == self.latent_space
        )

    @torch.no_grad()
    def probability(self, latents: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """``p(success)`` ``(B,)`` from normalised latents ``(B, F, L, D)`` and ids ``(B, 4)``."""
        return torch.sigmoid(self.probe(latents.to(self.device), instruction.to(self.device)))

    def judge(self, frames: np.ndarray, instruction: str) -> Verdict:
        """The probe's verdict on frames ``(T, H, W, 3)`` (only the sampled ``F`` are encoded).

        ``frames`` may also be a lazily decoded video (``benchmarks.lazy_frames.LazyFrames``):
        then only the sampled frames are decoded, or none when the probe reads latents.
        """
        count = self.probe.config.num_frames
        if isinstance(frames, (np.ndarray, list, tuple)):  # arrays: one frame or a list of them
            frames = check_judge_input(frames, instruction)
        total = len(frames)  # a lazy video decodes only the sampled frames here
        indices = uniform_frame_indices(total, count)
        start = time.perf_counter()
        if self.reads_latents_of(frames):
            check_instruction(instruction)
            latents = self.normalize(frames.raw_latents(indices))  # (F, L, D)
            read = "world-model latents"
        else:
            latents = self.encode(check_judge_input(frames[indices], instruction))  # (F, L, D)
            read = "frames"
        ids = instruction_ids(instruction, self.probe.config.instruction)
        p = float(self.probability(latents[None], torch.as_tensor(ids)[None])[0])
        self.last_seconds = time.perf_counter() - start
        rationale = f"probe p(success) {p:.3f} ({count} {read} sampled of {total}); "
        rationale += describe_instruction_ids(ids)
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
            "grid": list(probe.grid),
            "channels": probe.channels,
            "vocabularies": {slot: list(vocab) for slot, vocab in SLOTS.items()},
            "latent_mean": latent_mean.tolist(),
            "latent_std": latent_std.tolist(),
            "threshold": 0.5,
            "encoder_bundle": encoder_bundle,
            "encoder_sha256": encoder_sha256,
            **provenance,
        }
    )
