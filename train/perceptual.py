"""Perceptual losses that work offline: shift-tolerant LPIPS (ST-LPIPS).

The ``stlpips-pytorch`` wheel bundles the trained ST-LPIPS weights (the whole network: the
anti-aliased AlexNet / VGG16 backbone and the linear calibration layers) in
``stlpips_pytorch/weights/vST0.0/{alex,vgg}_shift_tolerant.pth``. Its own module imports
torchvision (broken on CPU here) at import time although the shift-tolerant variant never uses
it, so the network is re-declared here with the same layer layout and the bundled state dict is
loaded into it strictly (every weight from the file; nothing is downloaded). Only the package's
data files are used; ``stlpips_pytorch.stlpips`` is never imported.

``build_perceptual(None)`` is ``None`` (no perceptual term); ``build_perceptual("stlpips")``
(AlexNet, the light default) or ``"stlpips-vgg"`` return a frozen :class:`STLPIPS`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wm_env.errors import lookup

__all__ = ["PERCEPTUAL", "STLPIPS", "build_perceptual", "stlpips_weights_path"]

_PACKAGE = "stlpips_pytorch"
_INSTALL_HINT = "pip install stlpips-pytorch (BSD-2; bundles its weights, needs no torchvision)"


def stlpips_weights_path(net: str = "alex") -> Path:
    """Path of the ST-LPIPS weights bundled in the ``stlpips-pytorch`` wheel.

    Raises:
        ImportError: naming the package when it is not installed.
        FileNotFoundError: when the installed package lacks the weights file.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"ST-LPIPS needs the 'stlpips-pytorch' package: {_INSTALL_HINT}")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
    if not path.is_file():
        raise FileNotFoundError(f"ST-LPIPS weights {str(path)!r} missing from stlpips-pytorch")
    return path


class _BlurPool(nn.Module):
    """Anti-aliased downsampling: reflect pad 2, binomial [1, 2, 1]^2 blur, stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        k = a[:, None] * a[None, :]
        self.register_buffer("filt", (k / k.sum())[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (2, 2, 2, 2), mode="reflect")
        return F.conv2d(x, self.filt, stride=2, groups=x.shape[1])


def _alex_layers() -> tuple[list[nn.Module], list[int]]:
    """Shift-tolerant AlexNet features and the index where each of the 5 slices ends."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 11, stride=1, padding=2),
        _BlurPool(64),
        nn.ReLU(),  # relu1 (end of slice 1)
        nn.MaxPool2d(3, stride=1),
        _BlurPool(64),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(),  # relu2
        nn.MaxPool2d(3, stride=1),
        _BlurPool(192),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(),  # relu3
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),  # relu4
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),  # relu5
    ]
    return layers, [3, 7, 11, 13, 15]


def _vgg_layers() -> tuple[list[nn.Module], list[int]]:
    """Shift-tolerant VGG16 features (max-pool stride 1 + blur-pool) and slice ends."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers += [nn.MaxPool2d(2, stride=1), _BlurPool(in_ch)]
        else:
            layers += [nn.Conv2d(in_ch, int(v), 3, padding=1), nn.ReLU()]
            in_ch = int(v)
    return layers, [4, 10, 18, 26, 34]


_NETS = {
    "alex": (_alex_layers, (64, 192, 384, 256, 256)),
    "vgg": (_vgg_layers, (64, 128, 256, 512, 512)),
}


class STLPIPS(nn.Module):
    """Shift-tolerant LPIPS distance (Ghildyal & Liu, ECCV 2022) with the bundled weights.

    ``forward(pred, target)`` takes ``(B, H, W, 3)`` channels-last frames in ``[0, 1]`` (the
    project's layout) and returns the per-frame distance ``(B,)`` (0 for identical frames).
    Gradients flow to ``pred`` (use it as a loss); the weights are frozen. Frames should be at
    least 32 pixels a side (the AlexNet trunk downsamples 8x with reflect padding).
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in _NETS:
            raise ValueError(f"net must be one of {sorted(_NETS)}, got {net!r}")
        build, channels = _NETS[net]
        layers, ends = build()
        self.net_name = net
        self.scaling_layer = nn.Module()
        self.scaling_layer.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
        )
        self.scaling_layer.register_buffer(
            "scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        )
        self.net = nn.Module()
        start = 0
        for i, end in enumerate(ends):
            sl = nn.Sequential()
            for j in range(start, end):
                sl.add_module(str(j), layers[j])  # names match the checkpoint's keys
            self.net.add_module(f"slice{i + 1}", sl)
            start = end
        for i, ch in enumerate(channels):
            lin = nn.Module()
            lin.model = nn.Sequential(nn.Identity(), nn.Conv2d(ch, 1, 1, bias=False))
            self.add_module(f"lin{i}", lin)
        path = stlpips_weights_path(net)
        self.weights_path = str(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.load_state_dict(state, strict=True)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> STLPIPS:
        """Always eval: the metric is frozen."""
        return super().train(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Distance ``(B,)`` between channels-last frames ``(B, H, W, 3)`` in [0, 1]."""
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[-1] != 3:
            raise ValueError(
                f"need two (B, H, W, 3) batches, got {tuple(pred.shape)} / {tuple(target.shape)}"
            )
        if min(pred.shape[1:3]) < 32:
            raise ValueError(
                f"ST-LPIPS needs frames of at least 32x32, got {tuple(pred.shape[1:3])}"
            )
        x0 = pred.permute(0, 3, 1, 2).float() * 2.0 - 1.0  # (B, 3, H, W) in [-1, 1]
        x1 = target.permute(0, 3, 1, 2).to(x0) * 2.0 - 1.0
        sl = self.scaling_layer
        h0, h1 = (x0 - sl.shift) / sl.scale, (x1 - sl.shift) / sl.scale
        total = x0.new_zeros(x0.shape[0])
        for i in range(5):
            stage = getattr(self.net, f"slice{i + 1}")
            h0, h1 = stage(h0), stage(h1)
            f0 = h0 / (h0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit norm per position
            f1 = h1 / (h1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = getattr(self, f"lin{i}").model((f0 - f1).pow(2))  # (B, 1, h, w)
            total = total + d.mean(dim=(1, 2, 3))
        return total


PERCEPTUAL: dict[str, Callable[[], nn.Module]] = {
    "stlpips": lambda: STLPIPS("alex"),
    "stlpips-alex": lambda: STLPIPS("alex"),
    "stlpips-vgg": lambda: STLPIPS("vgg"),
}


def build_perceptual(name: str | None) -> nn.Module | None:
    """A frozen perceptual distance by name (``None`` -> ``None``, i.e. no perceptual term).

    Names: ``stlpips`` (= ``stlpips-alex``), ``stlpips-vgg``. Raises ``UnknownNameError`` with a
    suggestion on typos, ``ImportError`` naming ``stlpips-pytorch`` when it is not installed.
    """
    if name is None:
        return None
    return lookup("perceptual loss", name, PERCEPTUAL)()
