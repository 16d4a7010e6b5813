"""Per-episode latent cache: grown or re-split datasets re-encode only unseen episodes."""

from __future__ import annotations

import numpy as np
import torch

from train.latent_cache import cached_episode_latents, episode_hashes


def episodes(lengths: list[int], seed: int) -> dict[str, np.ndarray]:
    """``load_arrays``-like arrays of random 4x4 frames, one episode per length."""
    lengths_ = np.asarray(lengths, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return {
        "frames": rng.integers(0, 256, (int(lengths_.sum()), 4, 4, 3), dtype=np.uint8),
        "starts": np.cumsum(lengths_) - lengths_,
        "lengths": lengths_,
    }


def join(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    lengths = np.concatenate([p["lengths"] for p in parts])
    return {
        "frames": np.concatenate([p["frames"] for p in parts]),
        "starts": np.cumsum(lengths) - lengths,
        "lengths": lengths,
    }


class CountingEncoder:
    """Latents (N, 2, 3): per-frame mean pixel value, so results are checkable."""

    def __init__(self) -> None:
        self.frames_seen: list[int] = []

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        self.frames_seen.append(len(frames))
        means = torch.from_numpy(frames.reshape(len(frames), -1).mean(1).astype(np.float32))
        return means[:, None, None].expand(-1, 2, 3).clone()


def test_only_new_episodes_are_encoded_and_order_is_kept(tmp_path):
    path = tmp_path / "latents.safetensors"
    old, new = episodes([3, 5], seed=0), episodes([4], seed=1)
    encode = CountingEncoder()
    first = cached_episode_latents(path, "space", old, encode)
    assert encode.frames_seen == [8] and first.shape == (8, 2, 3)
    assert torch.equal(first, CountingEncoder()(old["frames"]))
    grown = join(new, old)  # a new episode, and the old ones in another position
    latents = cached_episode_latents(path, "space", grown, encode)
    assert encode.frames_seen == [8, 4]  # only the 4 frames of the new episode
    assert torch.equal(latents, CountingEncoder()(grown["frames"]))
    # a split of already cached episodes (e.g. validation) encodes nothing
    assert torch.equal(cached_episode_latents(path, "space", new, encode), latents[:4])
    assert encode.frames_seen == [8, 4]
    assert not list(tmp_path.glob(".*.tmp"))


def test_other_space_or_changed_frames_are_encoded_again(tmp_path):
    path = tmp_path / "latents.safetensors"
    arrays = episodes([3, 3], seed=0)
    encode = CountingEncoder()
    cached_episode_latents(path, "space-a", arrays, encode)
    cached_episode_latents(path, "space-b", arrays, encode)  # another encoder: all again
    assert encode.frames_seen == [6, 6]
    changed = {**arrays, "frames": arrays["frames"].copy()}
    changed["frames"][4] ^= 1  # the second episode was re-recorded
    latents = cached_episode_latents(path, "space-b", changed, encode)
    assert encode.frames_seen == [6, 6, 3]
    assert torch.equal(latents, CountingEncoder()(changed["frames"]))


def test_episode_hashes_depend_on_content_and_shape():
    arrays = episodes([2, 2], seed=0)
    same = {**arrays, "frames": arrays["frames"].copy()}
    assert episode_hashes(arrays) == episode_hashes(same)
    split = {**arrays, "starts": np.array([0, 1]), "lengths": np.array([1, 3])}
    assert not set(episode_hashes(split)) & set(episode_hashes(arrays))
    same["frames"][3, 0, 0, 0] ^= 255
    assert episode_hashes(same)[0] == episode_hashes(arrays)[0]
    assert episode_hashes(same)[1] != episode_hashes(arrays)[1]
