"""Latents of dataset episodes cached per episode, keyed by the episode's frame content.

A dataset that grows (``wmgym data collect`` resumed with more episodes) or is split anew
(another ``val_fraction`` or ``split_seed``) re-encodes only the episodes the cache has not
seen: each entry is named by a hash of the episode's frames, so it is found again whatever the
episode's id or split, and an episode whose frames changed is simply a new entry. The whole
cache belongs to one latent space (``space``: the encoder/adapter sections and weight hashes);
another space starts it afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file


def episode_hashes(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """One content hash per episode of ``LeRobotDataset.load_arrays`` output (frames and shape)."""
    frames = arrays["frames"]  # (N, H, W, 3) uint8
    hashes = []
    for start, length in zip(arrays["starts"].tolist(), arrays["lengths"].tolist(), strict=True):
        clip = np.ascontiguousarray(frames[start : start + length])
        digest = hashlib.sha256(repr(clip.shape).encode())
        digest.update(clip.data)
        hashes.append(digest.hexdigest())
    return hashes


def _read(path: Path, space: str, wanted: set[str]) -> dict[str, torch.Tensor]:
    """The entries of ``wanted`` stored at ``path`` for ``space`` (none if it is another space)."""
    if not path.exists():
        return {}
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("space") != space:
            return {}
        return {name: f.get_tensor(name) for name in f.keys() if name in wanted}


def cached_episode_latents(
    path: Path,
    space: str,
    arrays: Mapping[str, np.ndarray],
    encode: Callable[[np.ndarray], torch.Tensor],
) -> torch.Tensor:
    """Latents ``(N, L, D)`` of ``arrays["frames"]``, in frame order, from the cache at ``path``.

    Episodes missing from the cache are encoded together in one call of ``encode`` (uint8
    frames ``(M, H, W, 3)`` -> latents ``(M, L, D)``) and added to it; entries of other episodes
    already there are kept, so the train and validation splits can share one file.
    """
    hashes = episode_hashes(arrays)
    stored = _read(path, space, set(hashes))
    missing = [i for i, h in enumerate(hashes) if h not in stored]
    if missing:
        starts, lengths = arrays["starts"], arrays["lengths"]
        frames = np.concatenate(
            [arrays["frames"][starts[i] : starts[i] + lengths[i]] for i in missing]
        )
        encoded = encode(frames)  # (M, L, D)
        offsets = np.cumsum([0] + [int(lengths[i]) for i in missing])
        for j, i in enumerate(missing):
            stored[hashes[i]] = encoded[offsets[j] : offsets[j + 1]].contiguous()
        _write(path, space, stored)
    return torch.cat([stored[h] for h in hashes]) if hashes else torch.empty(0)


def _write(path: Path, space: str, entries: dict[str, torch.Tensor]) -> None:
    """Add ``entries`` to the cache at ``path`` (keeping the others of the same space), atomically."""
    if path.exists():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("space") == space:
                entries = {**{n: f.get_tensor(n) for n in f.keys()}, **entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(entries, str(tmp), metadata={"space": space})
    tmp.replace(path)
