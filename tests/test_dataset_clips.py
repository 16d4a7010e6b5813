"""Clip indexing and vectorised gathering (train/clips.py) against a naive per-clip loop."""

from __future__ import annotations

import numpy as np
import pytest

from train.clips import ClipIndex, clip_starts, gather_clips
from wm_env.dataset.split import split_episodes


def fake_arrays(lengths: list[int], action_dim: int = 3) -> dict[str, np.ndarray]:
    """Arrays shaped like LeRobotDataset.load_arrays, with values that encode their row."""
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    n = int(lengths_arr.sum())
    starts = np.concatenate([[0], np.cumsum(lengths_arr)[:-1]])
    rows = np.arange(n)
    return {
        "frames": (rows[:, None, None, None] + np.zeros((1, 2, 3, 3), int)).astype(
            np.uint8
        ),  # row id
        "actions": rows[:, None] * 10.0 + np.arange(action_dim),  # row * 10 + dim
        "episode_index": np.repeat(np.arange(len(lengths)) + 100, lengths_arr),
        "task_index": np.repeat(np.arange(len(lengths)) % 2, lengths_arr),
        "starts": starts,
        "lengths": lengths_arr,
    }


def naive_starts(lengths, history, future, frame_skip) -> list[int]:
    out, offset = [], 0
    for length in lengths:
        for s in range(length):
            if s + (history + future - 1) * frame_skip < length:
                out.append(offset + s)
        offset += length
    return out


def naive_gather(arrays, starts, history, future, frame_skip):
    n = history + future
    clips = {"frames": [], "actions": [], "episode_index": [], "instruction_index": []}
    for s in starts:
        clips["frames"].append(np.stack([arrays["frames"][s + i * frame_skip] for i in range(n)]))
        actions = [
            [arrays["actions"][s + i * frame_skip + j] for j in range(frame_skip)]
            for i in range(n - 1)
        ]
        clips["actions"].append(
            np.array(actions).reshape(n - 1, frame_skip, arrays["actions"].shape[1])
        )
        clips["episode_index"].append(arrays["episode_index"][s])
        clips["instruction_index"].append(arrays["task_index"][s])
    return {k: np.stack(v) for k, v in clips.items()}


LENGTHS = [7, 3, 12, 9, 1]


@pytest.mark.parametrize(
    ("history", "future", "frame_skip"), [(1, 1, 1), (2, 3, 2), (3, 1, 3), (1, 0, 4)]
)
def test_clip_starts_and_gather_match_naive(history, future, frame_skip):
    arrays = fake_arrays(LENGTHS)
    starts = clip_starts(LENGTHS, history, future, frame_skip)
    assert starts.tolist() == naive_starts(LENGTHS, history, future, frame_skip)
    got = gather_clips(arrays, starts, history, future, frame_skip)
    want = naive_gather(arrays, starts, history, future, frame_skip)
    n = history + future
    assert got["frames"].shape == (len(starts), n, 2, 3, 3)
    assert got["actions"].shape == (len(starts), n - 1, frame_skip, 3)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_clips_stay_inside_episodes_and_honor_frame_skip():
    history, future, frame_skip = 2, 2, 3
    arrays = fake_arrays(LENGTHS)
    starts = clip_starts(LENGTHS, history, future, frame_skip)
    clips = gather_clips(arrays, starts, history, future, frame_skip)
    rows = clips["frames"][:, :, 0, 0, 0].astype(int)  # (B, n) row ids of clip frames
    assert (np.diff(rows, axis=1) == frame_skip).all()
    episode_of_row = arrays["episode_index"]
    assert (episode_of_row[rows] == clips["episode_index"][:, None]).all()  # never crosses episodes
    action_rows = (clips["actions"][..., 0] // 10).astype(int)  # (B, n-1, skip)
    np.testing.assert_array_equal(action_rows[:, :, 0], rows[:, :-1])
    np.testing.assert_array_equal(action_rows[:, :, -1] + 1, rows[:, 1:])  # actions span the gap
    last_rows = arrays["starts"] + arrays["lengths"] - 1
    assert not np.isin(action_rows, last_rows).any()  # the null action of the last row is unused


def test_clip_index_and_short_episodes():
    arrays = fake_arrays([2, 10])
    index = ClipIndex.build(
        arrays, history=2, future=1, frame_skip=2
    )  # span 5: first episode too short
    assert len(index) == 6 and index.starts.min() == 2
    batch = index.gather(arrays, np.array([5, 0]))
    np.testing.assert_array_equal(batch["episode_index"], [101, 101])
    assert clip_starts([], 1, 1, 1).tolist() == []
    with pytest.raises(ValueError):
        clip_starts([5], 0, 1, 1)


def test_split_episodes_deterministic():
    train, val = split_episodes(20, 0.2, seed=3)
    assert len(val) == 4 and sorted(np.concatenate([train, val]).tolist()) == list(range(20))
    again = split_episodes(20, 0.2, seed=3)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, split_episodes(20, 0.2, seed=4)[1])
    assert len(split_episodes(5, 0.01, seed=0)[1]) == 1
    assert len(split_episodes(5, 0.0, seed=0)[1]) == 0
