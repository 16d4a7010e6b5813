"""A small video-pretrained semantic encoder: a ViT trained here by latent prediction (JEPA).

Issue 20's third latent space, "prediction over reconstruction" at small scale: the encoder is
never asked to reconstruct pixels. A predictor must guess, from the visible tokens of one
frame, the target encoder's features of (a) the tokens hidden from it and (b) every token of a
frame ``k`` steps later; the target encoder is an exponential moving average of the encoder
(as in I-JEPA / V-JEPA), and the targets are layer-normalised features, so the trivial constant
answer does not minimise the loss. Training lives in :mod:`train.stage_jepa`; this module holds
the networks, so that running a bundle built on it needs no training code.

Shapes: frames ``(B, H, W, 3)`` in, tokens ``(B, N, D)`` out with ``N = (H / patch) ** 2`` in
row-major grid order (the :class:`~wm_env.model.encoders.Encoder` convention).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wm_env.model.encoders import Encoder, MissingWeightsError, resize_and_normalize

CONFIG_FILE = "config.json"
PIXEL_MEAN, PIXEL_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # [0, 1] -> [-1, 1]


def jepa_pixels(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Float ``(B, H, W, 3)`` in [0, 1] -> ``(B, 3, S, S)`` in [-1, 1] at the encoder's size:
    what the backbone reads, in training and at run time alike."""
    return resize_and_normalize(images, (image_size, image_size), PIXEL_MEAN, PIXEL_STD)


WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class JEPAConfig:
    """Sizes of the JEPA encoder and its predictor (the predictor is used only in training)."""

    image_size: int = 64
    patch_size: int = 8  # 64 / 8 = an 8x8 token grid, as the VAE's latent grid
    dim: int = 128
    depth: int = 4
    heads: int = 4
    predictor_dim: int = 96
    predictor_depth: int = 2
    max_offset: int = 4  # future frames predicted up to this many steps ahead

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        for name in ("dim", "predictor_dim"):
            if getattr(self, name) % self.heads:
                raise ValueError(f"{name} {getattr(self, name)} is not a multiple of heads")
        if min(self.depth, self.predictor_depth, self.max_offset) < 1:
            raise ValueError("depth, predictor_depth and max_offset must be >= 1")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JEPAConfig:
        from wm_env.errors import lookup

        fields = {name: name for name in cls.__dataclass_fields__}
        for key in data:
            lookup("JEPA config field", key, fields)
        return cls(**data)


def _blocks(dim: int, depth: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
        batch_first=True, norm_first=True,
    )  # fmt: skip
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class JEPABackbone(nn.Module):
    """Patch embedding + transformer over the visible tokens of a frame."""

    def __init__(self, config: JEPAConfig) -> None:
        super().__init__()
        self.config = config
        p, n = config.patch_size, config.grid**2
        self.patch = nn.Conv2d(3, config.dim, kernel_size=p, stride=p)
        self.position = nn.Parameter(torch.randn(1, n, config.dim) * 0.02)
        self.blocks = _blocks(config.dim, config.depth, config.heads)
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, pixels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``pixels (B, 3, H, W)`` normalised -> features ``(B, N, D)``, or ``(B, K, D)`` of the
        kept token indices ``keep (B, K)`` only (the others are never seen)."""
        tokens = self.patch(pixels).flatten(2).transpose(1, 2) + self.position  # (B, N, D)
        if keep is not None:
            tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        return self.norm(self.blocks(tokens))


class JEPAPredictor(nn.Module):
    """From the context tokens, predict target features at given positions and time offsets."""

    def __init__(self, config: JEPAConfig) -> None:
        super().__init__()
        d, n = config.predictor_dim, config.grid**2
        self.embed = nn.Linear(config.dim, d)
        self.position = nn.Parameter(torch.randn(1, n, d) * 0.02)
        self.offset = nn.Embedding(config.max_offset + 1, d)  # 0: the same frame (masked tokens)
        self.query = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = _blocks(d, config.predictor_depth, config.heads)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.dim))

    def forward(
        self,
        context: torch.Tensor,
        keep: torch.Tensor,
        targets: torch.Tensor,
        offsets: torch.Tensor,
    ) -> torch.Tensor:
        """``context (B, K, D)`` at positions ``keep (B, K)``; queries at positions ``targets
        (B, Q)`` with time offsets ``offsets (B,)`` -> predicted features ``(B, Q, D)``."""
        width = self.position.shape[-1]
        position = self.position.expand(len(keep), -1, -1)
        seen = self.embed(context) + torch.gather(
            position, 1, keep[..., None].expand(-1, -1, width)
        )
        asked = torch.gather(position, 1, targets[..., None].expand(-1, -1, width))
        asked = asked + self.query + self.offset(offsets)[:, None, :]  # (B, Q, d)
        out = self.blocks(torch.cat([seen, asked], dim=1))[:, keep.shape[1] :]
        return self.out(out)


class JEPAModel(nn.Module):
    """What training updates: the encoder's backbone and the predictor."""

    def __init__(self, config: JEPAConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = JEPABackbone(config)
        self.predictor = JEPAPredictor(config)


class JEPAEncoder(Encoder):
    """The trained backbone as a frozen :class:`~wm_env.model.encoders.Encoder` (no decoder:
    a bundle trains a pixel decoder on its latents)."""

    name = "jepa"

    def __init__(self, config: JEPAConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = JEPABackbone(config)
        self._latent_dim = config.dim
        self._grid = (config.grid, config.grid)
        self._image_size = (config.image_size, config.image_size)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Float ``(B, H, W, 3)`` in [0, 1] -> ``(B, 3, S, S)`` in [-1, 1] at the encoder's size."""
        return jepa_pixels(images, self.config.image_size)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.pixels(images))  # (B, N, D)

    @classmethod
    def from_config(
        cls, config: JEPAConfig | dict[str, Any], image_size: int | None = None
    ) -> JEPAEncoder:
        """An encoder of these sizes with fresh weights (``image_size`` must match, if given)."""
        config = config if isinstance(config, JEPAConfig) else JEPAConfig.from_dict(config)
        if image_size is not None and image_size != config.image_size:
            raise ValueError(f"image_size {image_size} differs from the JEPA config's")
        return cls(config)

    @classmethod
    def from_pretrained(cls, path: str | Path, frozen: bool = True) -> JEPAEncoder:
        """Load ``config.json`` + ``model.safetensors`` written by :meth:`save_pretrained`."""
        from safetensors.torch import load_file

        from wm_env.errors import CorruptFileError

        root = Path(path)
        config_path, weights_path = root / CONFIG_FILE, root / WEIGHTS_FILE
        for needed in (config_path, weights_path):
            if not needed.is_file():
                raise MissingWeightsError(
                    f"JEPA encoder {str(root)!r} has no {needed.name} "
                    "(train one with `wmgym train jepa --out DIR`)"
                )
        try:
            config = JEPAConfig.from_dict(json.loads(config_path.read_text())["jepa"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CorruptFileError(config_path, f"not a JEPA config ({error})") from None
        encoder = cls(config)
        encoder.backbone.load_state_dict(load_file(weights_path))
        return encoder.freeze() if frozen else encoder

    def save_pretrained(self, path: str | Path, info: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` (sizes and ``info``) and the backbone's ``model.safetensors``."""
        from safetensors.torch import save_file

        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.backbone.state_dict().items()}
        save_file(state, root / WEIGHTS_FILE)
        (root / CONFIG_FILE).write_text(
            json.dumps({"type": "jepa", "jepa": asdict(self.config), "info": info or {}}, indent=1)
        )
        return root
