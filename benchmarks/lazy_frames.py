"""A world-model episode's video that decodes its frames only when they are read.

The leaderboard steps the world model without decoding (``WorldModel.step(decode=False)``) and
keeps the latents; a frame is decoded when a policy looks at it, when the judge samples it, or
when the episode's video is saved. Open-loop and random policies never look, the probe judge
samples a few frames, and only ``VIDEOS_PER_CELL`` episodes per cell are saved, so most frames
of a suite are never decoded. A judge that reads latents (the probe with ``inputs="latents"``)
takes them from :meth:`LazyFrames.raw_latents` and decodes none.
"""

from __future__ import annotations

import numpy as np
import torch


class LazyFrames:
    """uint8 ``(T + 1, H, W, 3)``: the start frame and the frames of ``T`` steps, decoded on read.

    Indexing (an int, a slice or an index array) decodes the frames not decoded yet in one
    batched call and keeps them; ``np.asarray(frames)`` decodes all of them. The frames equal
    what ``WorldModel.step`` would have returned for the same latents.

    Args:
        model: the :class:`~wm_env.world_model.WorldModel` that produced the latents.
        start: uint8 ``(H, W, 3)`` the frame the episode started from.
        latents: float ``(T, L, D)`` normalised latents of the frames after each step.
        residual: float ``(H, W, 3)`` the episode's row of ``model.residuals`` (None: plain).
        known: frames already decoded during the episode, by index (1..T).
        start_latents: float ``(L, D)`` normalised latents of the start frame (None: encoded
            from ``start`` when :meth:`raw_latents` needs them).
    """

    def __init__(
        self,
        model,
        start: np.ndarray,
        latents: torch.Tensor,
        residual: torch.Tensor | None,
        known: dict[int, np.ndarray] | None = None,
        start_latents: torch.Tensor | None = None,
    ) -> None:
        if start.dtype != np.uint8 or start.ndim != 3 or start.shape[-1] != 3:
            raise ValueError(f"start must be uint8 (H, W, 3); got {start.dtype} {start.shape}")
        if latents.ndim != 3:
            raise ValueError(f"latents must be (T, L, D); got {tuple(latents.shape)}")
        self.model = model
        self.latents = latents
        self.residual = residual
        self.start_latents = start_latents
        self._frames: dict[int, np.ndarray] = {**(known or {}), 0: start}

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self._frames[0].shape)

    @property
    def decoded(self) -> int:
        """How many frames (the start included) have been decoded or handed in so far."""
        return len(self._frames)

    def __len__(self) -> int:
        return 1 + len(self.latents)

    def __getitem__(self, index) -> np.ndarray:
        wanted = np.arange(len(self))[index]  # ints, slices, index arrays, negatives
        self._decode(np.unique(wanted))
        if wanted.ndim == 0:
            return self._frames[int(wanted)]
        if wanted.size == 0:
            return np.empty((0, *self.shape[1:]), np.uint8)
        return np.stack([self._frames[int(i)] for i in wanted])

    @property
    def latent_space(self) -> list[str]:
        """SHA-256 of the encoder (and adapter) weights whose latent space the latents are in."""
        from wm_env.bundle import latent_space_hashes

        return latent_space_hashes(self.model.config)

    def raw_latents(self, index) -> torch.Tensor:
        """float ``(m, L, D)``: the latents of frames ``index`` in the encoder's own units (not
        the world model's normalisation), without decoding; frame 0 is the start frame's."""
        wanted = np.atleast_1d(np.arange(len(self))[index])
        if self.start_latents is None:
            self.start_latents = self.model.encode(self._frames[0][None])[0]  # (L, D)
        every = torch.cat([self.start_latents[None].to(self.latents), self.latents])  # (T+1, L, D)
        return self.model.unnormalize(every[torch.as_tensor(wanted)]).float()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self[:]
        return frames if dtype is None else frames.astype(dtype)

    def _decode(self, indices: np.ndarray) -> None:
        missing = [int(i) for i in np.atleast_1d(indices) if int(i) not in self._frames]
        if not missing:
            return
        latents = self.latents[[i - 1 for i in missing]]  # (m, L, D)
        residual = None
        if self.residual is not None:
            residual = self.residual.expand(len(missing), *self.residual.shape)  # (m, H, W, 3)
        for i, frame in zip(missing, self.model.decode(latents, residual), strict=True):
            self._frames[i] = frame
