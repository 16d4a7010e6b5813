"""A small vision-language-action model that trains on a CPU (``wmgym train policy``).

Architecture (``SmallVLA``, about 0.4M parameters at the defaults):

- **Instruction encoder**: the instructions are templated, so words are tokens: a vocabulary
  built from the training instructions (``<pad>``, ``<unk>`` and every word), embeddings with
  learned positions, one small transformer layer and a masked mean. Word order matters
  ("stack the red cube on the blue cube"), hence the positions.
- **Image encoder**: a small CNN on the 64x64 frame whose every block is FiLM-modulated by the
  instruction (RT-1 style), so the features can single out the named cube. Where things are
  reaches the trunk twice: keypoints (x, y of a spatial softmax with a learned temperature,
  per keypoint map) and a coarse 8x8 map flattened (absolute positions); plus a global average.
- **Memory**: the episode's first frame, stacked with the current one (6 input channels): it
  shows where the cubes were before the arm came between them and the camera.
- **State**: the last gripper command this policy gave (-1 open / +1 close) and the step count
  of the episode; both are the policy's own history, not privileged sim state.
- **Action head**: OpenVLA-style discrete actions: for each of ``chunk`` future steps and each of
  the 7 dimensions, 256 logits over uniform bins in [-1, 1] (:class:`policies.action_bins.ActionBins`),
  trained with cross-entropy. The head is shared across the ``chunk x 7`` slots (a learned
  embedding per slot), which keeps it small.

:class:`SmallVLAPolicy` wraps a trained model as a :class:`policies.base.Policy`:
``act(obs)`` returns the first ``execute`` actions of the predicted chunk, ``(execute, 7)``.
Checkpoints are directories with ``config.json`` (``"type": "small_vla"``) and
``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from policies.action_bins import ActionBins
from policies.base import check_instruction, check_observation
from wm_env.errors import CorruptFileError
from wm_env.options import dtype_name, torch_dtype
from wm_env.spaces import ACTION_DIM

POLICY_TYPE = "small_vla"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+")
DTYPES = ("fp32", "fp64", "fp16")  # the names of wm_env.options, any spelling of them


# ----------------------------------------------------------------------------- instructions


def words(text: str) -> list[str]:
    """Lower-case word tokens of an instruction (punctuation dropped)."""
    return _WORD.findall(text.lower())


class Vocabulary:
    """Word vocabulary: index 0 is ``<pad>``, 1 is ``<unk>`` (any word not seen in training)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tokens[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}; got {tokens[:2]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary tokens must be unique")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, texts: Sequence[str]) -> Vocabulary:
        """The vocabulary of every word in ``texts`` (sorted, so it does not depend on order)."""
        found = sorted({w for text in texts for w in words(text)})
        if not found:
            raise ValueError("cannot build a vocabulary from instructions without words")
        return cls([PAD, UNK, *found])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, texts: Sequence[str], max_words: int) -> torch.Tensor:
        """int64 ``(B, max_words)`` token ids, ``<pad>``-padded; longer instructions are cut."""
        out = torch.zeros(len(texts), max_words, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.index.get(w, 1) for w in words(text)][:max_words]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class SmallVLAConfig:
    """Sizes and inputs of :class:`SmallVLA`.

    Attributes:
        image_size: square input resolution (frames of another size are resized).
        channels: widths of the CNN blocks; the first two halve the resolution.
        keypoints: spatial-softmax keypoints (x, y each) read off the last feature map.
        grid: side of the coarse map (average-pooled, flattened) that also feeds the trunk.
        grid_channels: channels of that coarse map.
        text_dim: width of the word embeddings and the instruction vector.
        max_words: instruction length in tokens (longer ones are cut).
        hidden: width of the trunk MLP.
        head_hidden: width of the shared per-slot action head.
        chunk: future actions predicted per call (an action chunk).
        execute: actions of the chunk that ``act`` returns (1..chunk).
        num_bins: discrete bins per action dimension over [-1, 1].
        first_frame: also see the episode's first frame (stacked with the current one): the
            cube before the arm hides it.
        gripper_input: feed the last gripper command the policy gave.
        time_input: feed the episode's step count (divided by ``max_steps``).
        max_steps: normalisation of the step count.
    """

    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 64, 64)
    keypoints: int = 32
    grid: int = 8
    grid_channels: int = 8
    text_dim: int = 64
    max_words: int = 12
    hidden: int = 256
    head_hidden: int = 128
    chunk: int = 8
    execute: int = 4
    num_bins: int = 256
    first_frame: bool = True
    gripper_input: bool = True
    time_input: bool = False
    max_steps: int = 50

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4, >= 16; got {self.image_size}")
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError(f"channels needs >= 2 positive widths; got {self.channels}")
        if self.chunk < 1 or not 1 <= self.execute <= self.chunk:
            raise ValueError(
                f"need chunk >= 1 and 1 <= execute <= chunk; got {self.chunk}, {self.execute}"
            )
        names = ("keypoints", "grid", "grid_channels", "text_dim", "max_words", "hidden")
        for name in (*names, "head_hidden", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.text_dim % 4:
            raise ValueError(f"text_dim must be a multiple of 4 (heads); got {self.text_dim}")
        ActionBins(self.num_bins)  # validates num_bins

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmallVLAConfig:
        """Inverse of ``dataclasses.asdict`` (JSON lists back to tuples); unknown keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown SmallVLAConfig fields {sorted(unknown)}")
        data = dict(data)
        if "channels" in data:
            data["channels"] = tuple(data["channels"])
        return cls(**data)


class InstructionEncoder(nn.Module):
    """Token ids ``(B, L)`` -> instruction vector ``(B, text_dim)``."""

    def __init__(self, vocab_size: int, dim: int, max_words: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Parameter(torch.randn(max_words, dim) * 0.02)
        self.layer = nn.TransformerEncoderLayer(
            dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == 0  # (B, L)
        pad = pad & ~pad.all(dim=1, keepdim=True)  # an empty row attends to its pads
        x = self.embed(tokens) + self.position[: tokens.shape[1]]  # (B, L, D)
        x = self.layer(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        return self.norm((x * keep).sum(1) / keep.sum(1).clamp_min(1.0))


class FiLMBlock(nn.Module):
    """conv -> GroupNorm -> FiLM (scale, shift from the instruction) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2)
        self.norm = nn.GroupNorm(min(8, c_out), c_out)

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        gamma, beta = film.chunk(2, dim=-1)  # (B, C) each
        x = self.norm(self.conv(x))
        return F.relu(x * (1 + gamma[..., None, None]) + beta[..., None, None])


def spatial_softmax(
    features: torch.Tensor, temperature: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """``(B, C, H, W)`` feature maps -> ``(B, 2C)`` expected (x, y) in [-1, 1] per channel."""
    b, c, h, w = features.shape
    attention = torch.softmax(features.flatten(2) / temperature, dim=-1).view(b, c, h, w)
    ys = torch.linspace(-1, 1, h, device=features.device, dtype=features.dtype)
    xs = torch.linspace(-1, 1, w, device=features.device, dtype=features.dtype)
    x = (attention.sum(2) * xs).sum(-1)  # (B, C)
    y = (attention.sum(3) * ys).sum(-1)  # (B, C)
    return torch.cat([x, y], dim=-1)


class SmallVLA(nn.Module):
    """Image + instruction (+ gripper command, step) -> logits over action bins of a chunk."""

    def __init__(self, config: SmallVLAConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.text = InstructionEncoder(vocab_size, config.text_dim, config.max_words)
        blocks, c_in = [], 6 if config.first_frame else 3
        for i, c_out in enumerate(config.channels):
            kernel, stride = (5, 2) if i == 0 else ((3, 2) if i == 1 else (3, 1))
            blocks.append(FiLMBlock(c_in, c_out, kernel, stride))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        # where things are: keypoints (a sharp spatial softmax) and a coarse flattened map
        self.keypoint_maps = nn.Conv2d(c_in, config.keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.grid_maps = nn.Conv2d(c_in, config.grid_channels, 1)
        self.film = nn.Linear(config.text_dim, 2 * sum(config.channels))
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        extra = int(config.gripper_input) + int(config.time_input)
        trunk_in = (
            2 * config.keypoints
            + config.grid_channels * config.grid**2
            + c_in
            + config.text_dim
            + extra
        )
        self.trunk = nn.Sequential(
            nn.Linear(trunk_in, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, config.hidden),
            nn.GELU(),
        )
        slots = config.chunk * ACTION_DIM
        self.slot = nn.Parameter(torch.randn(slots, config.head_hidden) * 0.02)
        self.head_in = nn.Linear(config.hidden, config.head_hidden)
        self.head_norm = nn.LayerNorm(config.head_hidden)
        self.head_out = nn.Linear(config.head_hidden, config.num_bins)

    def forward(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        gripper: torch.Tensor | None = None,
        step: torch.Tensor | None = None,
        first: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Action-bin logits.

        Args:
            images: float ``(B, 3, S, S)`` in [0, 1] (S = ``image_size``).
            tokens: int64 ``(B, max_words)`` from :meth:`Vocabulary.encode`.
            gripper: float ``(B,)`` last gripper command (-1 open, +1 close); -1 when None.
            step: float ``(B,)`` steps taken in the episode; 0 when None.
            first: float ``(B, 3, S, S)`` the episode's first frame (``first_frame`` models;
                ``images`` when None, as at the first step).

        Returns:
            float ``(B, chunk, 7, num_bins)`` logits.
        """
        config = self.config
        b = images.shape[0]
        text = self.text(tokens)  # (B, D)
        films = self.film(text).split([2 * c for c in config.channels], dim=-1)
        if config.first_frame:
            images = torch.cat([images, images if first is None else first], dim=1)
        x = images - 0.5
        for block, film in zip(self.blocks, films, strict=True):
            x = block(x, film)
        keypoints = spatial_softmax(self.keypoint_maps(x), self.log_temperature.exp())  # (B, 2K)
        grid = F.adaptive_avg_pool2d(self.grid_maps(x), config.grid).flatten(1)  # (B, G*g*g)
        parts = [keypoints, grid, x.mean(dim=(2, 3)), text]  # ..., (B, C), (B, D)
        if config.gripper_input:
            g = torch.full((b,), -1.0, device=x.device) if gripper is None else gripper
            parts.append(g.to(x.dtype)[:, None])
        if config.time_input:
            t = torch.zeros(b, device=x.device) if step is None else step
            parts.append((t.to(x.dtype) / config.max_steps)[:, None])
        h = self.trunk(torch.cat(parts, dim=-1))  # (B, hidden)
        slots = F.gelu(self.head_norm(self.head_in(h)[:, None] + self.slot))  # (B, k*7, Hh)
        return self.head_out(slots).view(b, config.chunk, ACTION_DIM, config.num_bins)


def prepare_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, size, size)`` in [0, 1] (resized if needed)."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x


# ----------------------------------------------------------------------------- the policy


class SmallVLAPolicy:
    """A trained :class:`SmallVLA` behind the :class:`policies.base.Policy` interface.

    ``act(obs)`` returns float32 ``(execute, 7)``: the first ``execute`` actions of the
    predicted chunk, each dimension decoded from its most likely bin (argmax, as OpenVLA). The
    policy assumes the runner executes every returned action: it counts them as steps and
    remembers the last gripper command as its own state for the next call.

    With ``ensemble`` (ACT's temporal ensembling) it predicts a chunk at every step and returns
    one action: the weighted mean of what the last ``chunk`` predictions said about this step,
    weights ``exp(-ensemble * i)`` with ``i = 0`` the oldest; the gripper is snapped to +-1.

    Args:
        model: the network (moved to ``device`` / ``dtype``).
        vocab: its instruction vocabulary.
        name: the policy's name in results.
        device, dtype: where and in which precision it runs.
        info: provenance stored in ``config.json`` (training steps, dataset, ...).
        execute: actions returned per call (default the model config's ``execute``).
        ensemble: temporal-ensembling weight ``m`` (``None``: off; ACT uses 0.01).
    """

    def __init__(
        self,
        model: SmallVLA,
        vocab: Vocabulary,
        name: str = POLICY_TYPE,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        info: dict[str, Any] | None = None,
        execute: int | None = None,
        ensemble: float | None = None,
    ) -> None:
        dtype = dtype_name(dtype, DTYPES)
        execute = model.config.execute if execute is None else int(execute)
        if not 1 <= execute <= model.config.chunk:
            raise ValueError(f"execute must be in 1..chunk={model.config.chunk}; got {execute}")
        if ensemble is not None and not (np.isfinite(ensemble) and ensemble >= 0):
            raise ValueError(f"ensemble must be a number >= 0 or None; got {ensemble}")
        self.execute = 1 if ensemble is not None else execute
        self.ensemble = ensemble
        self._chunks: list[tuple[int, np.ndarray]] = []  # (step it was predicted at, (k, 7))
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(self.device, torch_dtype(dtype)).eval()
        self.config = model.config
        self.vocab = vocab
        self.bins = ActionBins(self.config.num_bins)
        self.name = name
        self.info = dict(info or {})
        self._step = 0
        self._gripper = -1.0
        self._first: np.ndarray | None = None
        self._instruction: str | None = None

    # -- Policy -------------------------------------------------------------------------------
    def reset(self, instruction: str) -> None:
        """Start an episode: step count 0, gripper open."""
        self._instruction = check_instruction(instruction)
        self._step = 0
        self._gripper = -1.0
        self._first = None
        self._chunks = []

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """float32 ``(execute, 7)`` actions for the observation ``{"image", "instruction"}``."""
        image, instruction = check_observation(obs)
        if self._instruction is None:
            self.reset(instruction)
        if self._first is None:
            self._first = image.copy()
        chunk = self.predict(
            image[None],
            [instruction],
            np.array([self._gripper]),
            np.array([self._step]),
            self._first[None],
        )[0]
        actions = chunk[: self.execute] if self.ensemble is None else self._ensembled(chunk)
        self._step += len(actions)
        self._gripper = float(actions[-1, -1])
        return actions

    def _ensembled(self, chunk: np.ndarray) -> np.ndarray:
        """``(1, 7)``: this step's action averaged over the chunks that predicted it."""
        k = self.config.chunk
        self._chunks = [(s, c) for s, c in self._chunks if self._step - s < k]
        self._chunks.append((self._step, chunk))
        votes = np.stack([c[self._step - s] for s, c in self._chunks])  # (n, 7), oldest first
        weights = np.exp(-self.ensemble * np.arange(len(votes)))
        action = (weights[:, None] * votes).sum(0) / weights.sum()
        action[-1] = 1.0 if action[-1] > 0 else -1.0
        return action[None].astype(np.float32)

    # -- batched inference ----------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        images: np.ndarray,
        instructions: Sequence[str],
        gripper: np.ndarray | None = None,
        step: np.ndarray | None = None,
        first: np.ndarray | None = None,
    ) -> np.ndarray:
        """Whole chunks for a batch: uint8 ``(B, H, W, 3)`` -> float32 ``(B, chunk, 7)``.

        ``gripper`` (B,) and ``step`` (B,) are the episodes' last gripper commands and step
        counts (defaults: open, 0); ``first`` uint8 ``(B, H, W, 3)`` their first frames
        (default: ``images``).
        """
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        dtype = torch_dtype(self.dtype)
        x = prepare_images(torch.as_tensor(np.ascontiguousarray(images)), self.config.image_size)
        tokens = self.vocab.encode(list(instructions), self.config.max_words).to(self.device)
        g = None if gripper is None else torch.as_tensor(gripper, dtype=dtype, device=self.device)
        t = None if step is None else torch.as_tensor(step, dtype=dtype, device=self.device)
        f = None
        if first is not None:
            f = prepare_images(torch.as_tensor(np.ascontiguousarray(first)), self.config.image_size)
            f = f.to(self.device, dtype)
        logits = self.model(x.to(self.device, dtype), tokens, g, t, f)  # (B, k, 7, bins)
        return self.bins.decode(logits.argmax(-1)).cpu().numpy().astype(np.float32)

    # -- checkpoints ----------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into directory ``path``."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tmp = root / f".{WEIGHTS_FILE}.tmp"
        save_file(state, str(tmp))
        tmp.replace(root / WEIGHTS_FILE)
        config = {
            "type": POLICY_TYPE,
            "name": self.name,
            "model": json.loads(
                json.dumps(
                    dataclasses.asdict(dataclasses.replace(self.config, execute=self.execute))
                )
            ),
            "vocabulary": self.vocab.tokens,
            "actions": {
                "num_bins": self.bins.num_bins,
                "low": self.bins.low,
                "high": self.bins.high,
            },
            "ensemble": self.ensemble,
            "device": str(self.device),
            "dtype": self.dtype,
            "info": self.info,
        }
        tmp = root / f".{CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.replace(root / CONFIG_FILE)
        return root

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        name: str | None = None,
        execute: int | None = None,
        ensemble: float | None = None,
    ) -> SmallVLAPolicy:
        """Load a checkpoint directory; ``device`` / ``dtype`` / ``execute`` / ``ensemble``
        default to its ``config.json``."""
        root = Path(path)
        config_path = root / CONFIG_FILE
        if not config_path.is_file():
            raise ValueError(f"{root} is not a small VLA checkpoint: {CONFIG_FILE} is missing")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise CorruptFileError(config_path, f"not valid JSON ({error})") from None
        if config.get("type") != POLICY_TYPE:
            raise ValueError(f"{config_path}: type is {config.get('type')!r}, not {POLICY_TYPE!r}")
        model_config = SmallVLAConfig.from_dict(config["model"])
        vocab = Vocabulary(config["vocabulary"])
        model = SmallVLA(model_config, len(vocab))
        weights = root / WEIGHTS_FILE
        if not weights.is_file():
            raise CorruptFileError(weights, "missing (the checkpoint is incomplete)")
        try:
            state = load_file(str(weights))
        except Exception as error:  # safetensors raises SafetensorError on truncation
            raise CorruptFileError(weights, f"cannot read safetensors ({error})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise CorruptFileError(weights, f"does not match config.json ({error})") from None
        return cls(
            model,
            vocab,
            name=name or config.get("name") or root.name,
            device=device or config.get("device", "cpu"),
            dtype=dtype or config.get("dtype", "float32"),
            info=config.get("info", {}),
            execute=execute,
            ensemble=config.get("ensemble") if ensemble is None else ensemble,
        )
