"""OpenVLA-style action discretisation: ``num_bins`` uniform bins per dimension over ``[low, high]``.

Bin ``i`` covers ``[low + i w, low + (i + 1) w)`` with ``w = (high - low) / num_bins`` and decodes
to its centre, so the round trip error is at most ``w / 2`` (0.0039 for 256 bins over [-1, 1]).
Values outside the range fall into the end bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ActionBins:
    """Uniform bins over ``[low, high]`` (the same for every action dimension).

    Attributes:
        num_bins: bins per dimension (OpenVLA: 256).
        low, high: the range the bins cover.
    """

    num_bins: int = 256
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be >= 2; got {self.num_bins}")
        if not self.high > self.low:
            raise ValueError(f"need high > low; got low={self.low}, high={self.high}")

    @property
    def width(self) -> float:
        """Width of one bin."""
        return (self.high - self.low) / self.num_bins

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        """float actions ``(...)`` -> int64 bin indices ``(...)`` in ``[0, num_bins)``."""
        index = torch.floor((actions.float() - self.low) / self.width)
        return index.clamp(0, self.num_bins - 1).long()

    def decode(self, bins: torch.Tensor) -> torch.Tensor:
        """int bin indices ``(...)`` -> float32 bin centres ``(...)``."""
        return self.low + (bins.float() + 0.5) * self.width

    def soft_targets(self, actions: torch.Tensor, sigma: float) -> torch.Tensor:
        """Gaussian label smoothing: ``(...)`` actions -> ``(..., num_bins)`` target distributions.

        ``sigma`` is in bins; 0 gives one-hot targets (plain cross-entropy, as OpenVLA).
        """
        index = self.encode(actions)
        if sigma <= 0:
            return torch.nn.functional.one_hot(index, self.num_bins).float()
        centres = torch.arange(self.num_bins, device=actions.device, dtype=torch.float32)
        logits = -0.5 * ((centres - index[..., None].float()) / sigma) ** 2
        return torch.softmax(logits, dim=-1)
