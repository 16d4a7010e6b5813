"""``wmgym train jepa``: pretrain the small JEPA encoder on the sim's videos (issue 20).

Each sample is one frame ``t`` of a training episode and a frame ``t + k`` (``k`` uniform in
``1..max_offset``). The encoder sees only the visible tokens of frame ``t`` (a block of about
``mask_ratio`` of the grid is hidden); the predictor must produce the target encoder's
features of the hidden tokens of frame ``t`` and of every token of frame ``t + k``. The target
encoder is a momentum copy of the encoder (momentum rising from ``momentum`` to 1 over the run)
and its features are layer-normalised, so a constant answer is not a minimum. Nothing is ever
decoded to pixels.

The result, ``<out>/encoder`` (``config.json`` + ``model.safetensors``: the target encoder, as
I-JEPA keeps), is registered frozen in a bundle with ``wmgym train encoder --encoder jepa
--path <out>/encoder`` (the weights are copied into the bundle), then trained on like the other
semantic spaces: adapter, pixel decoder, dynamics.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from train.loop import OptimConfig, RuntimeConfig, Trainer, batch_rng, config_dict
from wm_env.dataset.split import DataConfig, dataset_fingerprint, load_split


@dataclass(frozen=True)
class JEPAStageConfig:
    """Pretrain the JEPA encoder by latent prediction (see the module docstring).

    Examples::

        wmgym train jepa --data.dataset data/sim64 --out runs/jepa --optim.steps 6000
        wmgym train encoder --bundle outputs/bundles/jepa --encoder jepa --path runs/jepa/encoder

    Attributes:
        out: run directory: checkpoints, ``loss.csv`` and the trained ``encoder/``.
        image_size, patch_size, dim, depth, heads: the encoder (a ViT over a patch grid).
        predictor_dim, predictor_depth: the predictor (training only).
        max_offset: future frames are predicted up to this many steps ahead.
        mask_ratio: share of frame ``t``'s tokens hidden from the encoder (one random block,
            topped up or trimmed to exactly this share).
        momentum: the target encoder's starting momentum (rises linearly to 1).
        variance_weight: weight of a VICReg-style variance hinge on the encoder's features of
            the later frame: each feature's standard deviation across the batch, at each token
            position, is pushed up to 1. Without it a small encoder on these mostly static
            scenes drifts towards features that encode the token's position and not what is
            there, which the predictor then guesses trivially (measured: loss 0.55 -> 0.03 in
            360 steps while the targets' spread across frames halved).
    """

    out: Path = Path("runs/jepa")
    data: DataConfig = field(default_factory=DataConfig)
    image_size: int = 64
    patch_size: int = 8
    dim: int = 128
    depth: int = 4
    heads: int = 4
    predictor_dim: int = 96
    predictor_depth: int = 2
    max_offset: int = 4
    mask_ratio: float = 0.6
    momentum: float = 0.996
    variance_weight: float = 1.0
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=6000,
            batch_size=64,
            lr=5e-4,
            warmup_steps=200,
            min_lr_ratio=0.1,
            weight_decay=0.05,
            ema_decay=0.0,
        )  # fmt: skip
    )
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1); got {self.mask_ratio}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1]; got {self.momentum}")

    def jepa_config(self):
        from wm_env.model.jepa import JEPAConfig

        return JEPAConfig(
            image_size=self.image_size, patch_size=self.patch_size, dim=self.dim,
            depth=self.depth, heads=self.heads, predictor_dim=self.predictor_dim,
            predictor_depth=self.predictor_depth, max_offset=self.max_offset,
        )  # fmt: skip


class JEPATrainee(torch.nn.Module):
    """The online model (encoder backbone + predictor) and its momentum target backbone."""

    def __init__(self, config) -> None:
        from wm_env.model.jepa import JEPAModel

        super().__init__()
        self.online = JEPAModel(config)
        self.target = copy.deepcopy(self.online.backbone).requires_grad_(False)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target <- momentum * target + (1 - momentum) * online backbone."""
        for target, online in zip(
            self.target.parameters(), self.online.backbone.parameters(), strict=True
        ):
            target.lerp_(online.detach(), 1.0 - momentum)


def block_masks(
    rng: np.random.Generator, batch: int, grid: int, ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the kept ``(B, K)`` and hidden ``(B, M)`` token indices of a ``grid x grid``
    frame, ``M = round(ratio * grid**2)``: one random rectangle is hidden first, then random
    other tokens (or a random part of the rectangle) make the count exact."""
    n = grid * grid
    hidden_count = min(max(int(round(ratio * n)), 1), n - 1)
    side = max(1, int(round(np.sqrt(hidden_count))))
    kept, hidden = [], []
    for _ in range(batch):
        h = int(rng.integers(max(1, side // 2), min(grid, 2 * side) + 1))
        w = int(np.clip(round(hidden_count / h), 1, grid))
        top, left = int(rng.integers(0, grid - h + 1)), int(rng.integers(0, grid - w + 1))
        in_block = np.zeros((grid, grid), bool)
        in_block[top : top + h, left : left + w] = True
        order = np.argsort(rng.random(n) - in_block.ravel(), kind="stable")  # block first
        hidden.append(np.sort(order[:hidden_count]))
        kept.append(np.sort(order[hidden_count:]))
    return np.stack(kept), np.stack(hidden)


def frame_pairs(
    rng: np.random.Generator, starts: np.ndarray, lengths: np.ndarray, batch: int, max_offset: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``(B,)`` of frames ``t`` and ``t + k`` in the same episode, and ``k (B,)``."""
    usable = np.flatnonzero(lengths > 1)
    if not len(usable):
        raise ValueError("JEPA pretraining needs episodes of at least 2 frames")
    episodes = usable[rng.integers(0, len(usable), batch)]
    reach = np.minimum(max_offset, lengths[episodes] - 1)  # (B,)
    offsets = 1 + (rng.random(batch) * reach).astype(np.int64)
    first = (rng.random(batch) * (lengths[episodes] - offsets)).astype(np.int64)
    rows = starts[episodes] + first
    return rows, rows + offsets, offsets


def jepa_loss(
    model: JEPATrainee,
    now: torch.Tensor,
    later: torch.Tensor,
    offsets: torch.Tensor,
    kept: torch.Tensor,
    hidden: torch.Tensor,
    variance_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Latent-prediction loss of one batch (plus the variance hinge when weighted).

    Args:
        now, later: normalised pixels ``(B, 3, S, S)`` of frames ``t`` and ``t + k``.
        offsets: ``k`` ``(B,)``; kept / hidden: token indices ``(B, K)`` / ``(B, M)`` of frame t.
        variance_weight: see :class:`JEPAStageConfig`.
    """
    n = model.online.config.grid**2
    with torch.no_grad():
        targets_now = model.target(now)  # (B, N, D)
        targets_later = model.target(later)  # (B, N, D)
        width = targets_now.shape[-1]
        masked = torch.gather(targets_now, 1, hidden[..., None].expand(-1, -1, width))
        target = F.layer_norm(torch.cat([masked, targets_later], dim=1), (width,))  # (B, M+N, D)
    context = model.online.backbone(now, keep=kept)  # (B, K, D)
    every = torch.arange(n, device=now.device).expand(len(now), -1)  # (B, N)
    same = model.online.predictor(context, kept, hidden, torch.zeros_like(offsets))  # (B, M, D)
    future = model.online.predictor(context, kept, every, offsets)  # (B, N, D)
    error_now = F.smooth_l1_loss(same, target[:, : hidden.shape[1]])
    error_later = F.smooth_l1_loss(future, target[:, hidden.shape[1] :])
    loss = 0.5 * (error_now + error_later)
    spread = float(targets_now.std(dim=0).mean())  # near 0: collapsed targets
    terms = {}
    if variance_weight > 0:
        online = model.online.backbone(later)  # (B, N, D)
        hinge = F.relu(1.0 - torch.sqrt(online.var(dim=0) + 1e-4)).mean()  # per position, dim
        loss = loss + variance_weight * hinge
        terms["variance_hinge"] = float(hinge.detach())
    return loss, {
        "masked": float(error_now.detach()), "future": float(error_later.detach()),
        "target_spread": spread, **terms,
    }  # fmt: skip


def run_jepa_stage(config: JEPAStageConfig, progress: bool = True) -> Path:
    """Pretrain the encoder (resuming a run in ``config.out``); return ``<out>/encoder``."""
    from wm_env.model.encoders import to_float_images
    from wm_env.model.jepa import JEPAEncoder, jepa_pixels

    jepa = config.jepa_config()
    dataset, train, _ = load_split(config.data, progress)
    frames = train["frames"]  # (N, H, W, 3) uint8
    starts, lengths = train["starts"], train["lengths"]  # (E,) each
    model = JEPATrainee(jepa)
    device = torch.device(config.runtime.device)

    def pixels(rows: np.ndarray) -> torch.Tensor:
        images = to_float_images(frames[rows], device)  # (B, H, W, 3)
        return jepa_pixels(images, jepa.image_size)  # (B, 3, S, S)

    def loss_fn(wrapped, step: int):
        trainee = getattr(wrapped, "module", wrapped)  # DDP wraps it
        momentum = config.momentum + (1.0 - config.momentum) * step / max(config.optim.steps, 1)
        trainee.update_target(min(momentum, 1.0))
        rng = batch_rng(config.runtime, step)
        batch = config.optim.batch_size
        now, later, offsets = frame_pairs(rng, starts, lengths, batch, jepa.max_offset)
        kept, hidden = block_masks(rng, batch, jepa.grid, config.mask_ratio)
        as_tensor = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        return jepa_loss(
            trainee, pixels(now), pixels(later), as_tensor(offsets), as_tensor(kept),
            as_tensor(hidden), config.variance_weight,
        )  # fmt: skip

    trainer = Trainer(
        model, loss_fn, config.out, config.optim, config.runtime, run_config=config_dict(config)
    )
    trained = trainer.fit(progress)
    encoder = JEPAEncoder(jepa)
    encoder.backbone.load_state_dict(trained.target.state_dict())
    info: dict[str, Any] = {
        "dataset": dataset_fingerprint(dataset),
        "steps": trainer.state.step,
        "seconds": round(trainer.state.seconds, 1),
        "mask_ratio": config.mask_ratio,
        "momentum": config.momentum,
        "variance_weight": config.variance_weight,
    }
    return encoder.save_pretrained(config.out / "encoder", info=info)
