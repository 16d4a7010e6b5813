"""Video encode/decode and the LeRobot v3.0 writer/reader (wm_env.dataset.video / .lerobot).

Frames are smooth per-episode colour gradients that drift over time, so lossy video can be
compared with a tolerance: H.264 yuv444p crf 10 must reproduce them with a mean absolute error
below ``X264_MAE`` grey levels (AV1 yuv420p below ``AV1_MAE``), while frames of a different
episode or time step differ by far more.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wm_env.dataset.lerobot import (
    EPISODES_PATH,
    INFO_PATH,
    STATS_PATH,
    LeRobotDataset,
    LeRobotWriter,
    UnsupportedDatasetError,
    chunk_file,
    video_key,
)
from wm_env.dataset.record import EpisodeRecord
from wm_env.dataset.video import decode_video, encode_video, probe_video
from wm_env.errors import CorruptFileError, UnknownNameError

FPS = 10
H, W = 24, 32
X264_MAE = 2.0
AV1_MAE = 6.0
TASKS = ["pick the red cube", "open the drawer"]
CAMERAS = ("image", "wrist")


def gradient_frames(n: int, seed: int, height: int = H, width: int = W) -> np.ndarray:
    """uint8 (n, height, width, 3) smooth colour gradients drifting with time, distinct per seed."""
    rng = np.random.default_rng(seed)
    phase, freq = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.5, 1.5, 3)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)  # (h, w)
    t = np.arange(n)[:, None, None, None] * 0.4  # (n, 1, 1, 1)
    arg = 2 * np.pi * freq * (x[..., None] + 0.5 * y[..., None]) + phase + t  # (n, h, w, 3)
    return (128 + 100 * np.sin(arg)).astype(np.uint8)


def make_record(episode_index: int, steps: int | None = None, cameras=CAMERAS) -> EpisodeRecord:
    """A deterministic synthetic episode (content depends only on episode_index)."""
    rng = np.random.default_rng(1000 + episode_index)
    steps = steps if steps is not None else 6 + episode_index % 5
    success_per_step = (
        np.arange(steps + 1) >= steps - 1 if episode_index % 2 == 0 else np.zeros(steps + 1, bool)
    )
    return EpisodeRecord(
        episode_index=episode_index,
        frames={
            c: gradient_frames(steps + 1, seed=episode_index * 10 + i)
            for i, c in enumerate(cameras)
        },
        actions=rng.normal(size=(steps, 7)).astype(np.float32),
        states=rng.normal(size=(steps + 1, 9)).astype(np.float32),
        instruction=TASKS[episode_index % 2],
        success=bool(success_per_step[-1]),
        success_per_step=success_per_step,
        meta={"family": "pick", "seed": episode_index, "layout": [1, 2, 3]},
    )


def write_dataset(
    root: Path, n_episodes: int, extra_info: dict | None = None
) -> list[EpisodeRecord]:
    writer = LeRobotWriter(root, FPS, extra_info=extra_info)
    records = [make_record(e) for e in range(n_episodes)]
    for record in records:
        writer.write_episode(record, task_index=record.episode_index % 2)
    writer.finalize(TASKS)
    return records


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[EpisodeRecord]]:
    """A finalized 4-episode dataset with two cameras (shared, read-only)."""
    root = tmp_path_factory.mktemp("written")
    return root, write_dataset(root, 4, extra_info={"config": "abc", "n": 4})


# ------------------------------------------------------------------------------------ video


def test_video_round_trip_and_probe(tmp_path):
    frames = gradient_frames(12, seed=3)
    path = tmp_path / "v.mp4"
    encode_video(path, frames, FPS)
    decoded = decode_video(path, expected_frames=12)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert mae(decoded, frames) < X264_MAE
    assert mae(decoded[1:], frames[:-1]) > 5 * X264_MAE  # frames stay in order
    assert probe_video(path) == {
        "height": H,
        "width": W,
        "codec": "h264",
        "pix_fmt": "yuv444p",
        "fps": FPS,
    }
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temp files left


def test_video_time_range_of_concatenated_file(tmp_path):
    frames = gradient_frames(15, seed=4)
    path = tmp_path / "v.mp4"
    encode_video(path, frames, FPS)
    part = decode_video(path, expected_frames=9, from_timestamp=6 / FPS, to_timestamp=15 / FPS)
    assert mae(part, frames[6:]) < X264_MAE
    head = decode_video(path, from_timestamp=0.0, to_timestamp=6 / FPS)
    assert len(head) == 6 and mae(head, frames[:6]) < X264_MAE


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_video_corrupt_raises_naming_file(tmp_path, damage):
    path = tmp_path / "v.mp4"
    encode_video(path, gradient_frames(10, seed=5), FPS)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    else:
        path.unlink()
    with pytest.raises(CorruptFileError) as info:
        decode_video(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_video_frame_count_mismatch(tmp_path):
    path = tmp_path / "v.mp4"
    encode_video(path, gradient_frames(5, seed=6), FPS)
    with pytest.raises(CorruptFileError, match="holds 5 frames; expected 7"):
        decode_video(path, expected_frames=7)


def test_encode_failure_leaves_no_file(tmp_path):
    path = tmp_path / "v.mp4"
    with pytest.raises(Exception):  # noqa: B017 - any encoder error will do
        encode_video(path, gradient_frames(3, seed=1), FPS, codec="no-such-codec")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ writer / reader


def test_round_trip(written):
    root, records = written
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 4 and ds.num_frames == sum(r.num_steps + 1 for r in records)
    assert sorted(ds.camera_keys) == sorted(CAMERAS) and ds.fps == FPS
    for r in records:
        e = r.episode_index
        actions = ds.actions(e)
        np.testing.assert_array_equal(actions[:-1], r.actions)
        np.testing.assert_array_equal(actions[-1], np.zeros(7, np.float32))
        np.testing.assert_array_equal(ds.action_valid(e), np.arange(r.num_steps + 1) < r.num_steps)
        np.testing.assert_array_equal(ds.states(e), r.states)
        np.testing.assert_array_equal(ds.success_per_step(e), r.success_per_step)
        assert ds.instruction(e) == r.instruction and ds.success(e) == r.success
        assert ds.episode_meta(e) == r.meta
        for camera in CAMERAS:
            assert mae(ds.frames(e, camera), r.frames[camera]) < X264_MAE
    # frames of another episode must not match (the tolerance is meaningful)
    assert mae(ds.frames(0, "image"), records[0].frames["wrist"]) > 5 * X264_MAE


def test_layout_and_global_indices(written):
    root, records = written
    info = json.loads((root / INFO_PATH).read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 4
    assert (
        info["total_frames"] == sum(r.num_steps + 1 for r in records) and info["total_tasks"] == 2
    )
    assert info["splits"] == {"train": "0:4"} and info["chunks_size"] == 1000
    assert info["wmgym"] == {"config": "abc", "n": 4}
    video = info["features"][video_key("image")]
    assert video["dtype"] == "video" and video["shape"] == [H, W, 3]
    assert video["info"]["video.codec"] == "h264" and video["info"]["video.pix_fmt"] == "yuv444p"
    assert info["features"]["observation.state"]["shape"] == [9]
    assert (root / "data/chunk-000/file-003.parquet").is_file()
    assert (root / "videos/observation.images.wrist/chunk-000/file-002.mp4").is_file()
    assert chunk_file(1234) == (1, 234)
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert list(tasks.index) == TASKS and list(tasks["task_index"]) == [0, 1]

    ds = LeRobotDataset(root)
    lengths = np.array([r.num_steps + 1 for r in records])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    np.testing.assert_array_equal(ds.episodes["dataset_from_index"], starts)
    np.testing.assert_array_equal(ds.episodes["dataset_to_index"], starts + lengths)
    assert list(ds.episodes["tasks"].map(list)) == [[r.instruction] for r in records]
    index = np.concatenate([ds.column(e, "index") for e in range(4)])
    np.testing.assert_array_equal(index, np.arange(lengths.sum()))
    for e in range(4):
        np.testing.assert_allclose(
            ds.column(e, "timestamp"), np.arange(lengths[e]) / FPS, rtol=1e-6
        )
        done = ds.column(e, "next.done")
        assert done[-1] and not done[:-1].any()
        np.testing.assert_array_equal(ds.column(e, "task_index"), e % 2)


def test_stats_match_numpy_on_valid_rows(written):
    root, records = written
    stats = json.loads((root / STATS_PATH).read_text())
    actions = np.concatenate([r.actions for r in records]).astype(np.float64)  # valid rows only
    states = np.concatenate([r.states for r in records]).astype(np.float64)
    for name, values in (("action", actions), ("observation.state", states)):
        s = stats[name]
        np.testing.assert_allclose(s["mean"], values.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(s["std"], values.std(0), rtol=1e-6)
        np.testing.assert_allclose(s["min"], values.min(0))
        np.testing.assert_allclose(s["max"], values.max(0))
        np.testing.assert_allclose(s["q01"], np.quantile(values, 0.01, axis=0), rtol=1e-6)
        np.testing.assert_allclose(s["q99"], np.quantile(values, 0.99, axis=0), rtol=1e-6)
        assert s["count"] == [len(values)]
    assert LeRobotDataset(root).stats == stats


def test_load_arrays(written):
    root, records = written
    ds = LeRobotDataset(root)
    arrays = ds.load_arrays("image", episodes=[1, 3], progress=False)
    lengths = [records[1].num_steps + 1, records[3].num_steps + 1]
    n = sum(lengths)
    assert arrays["frames"].shape == (n, H, W, 3) and arrays["actions"].shape == (n, 7)
    np.testing.assert_array_equal(arrays["starts"], [0, lengths[0]])
    np.testing.assert_array_equal(arrays["episode_index"], np.repeat([1, 3], lengths))
    np.testing.assert_array_equal(
        arrays["frame_index"], np.concatenate([np.arange(k) for k in lengths])
    )
    np.testing.assert_array_equal(arrays["actions"][lengths[0] : n - 1], records[3].actions)
    assert arrays["action_valid"].sum() == n - 2
    assert mae(arrays["frames"][: lengths[0]], records[1].frames["image"]) < X264_MAE
    np.testing.assert_array_equal(arrays["task_index"], 1)


def test_unknown_camera_suggests(written):
    ds = LeRobotDataset(written[0])
    with pytest.raises(UnknownNameError, match="did you mean 'wrist'"):
        ds.frames(0, "wirst")


def test_resume_remove_partial_and_refinalize(tmp_path):
    writer = LeRobotWriter(tmp_path, FPS)
    for e in range(3):
        writer.write_episode(make_record(e), task_index=e % 2)
    killed_meta = tmp_path / EPISODES_PATH.format(chunk_index=0, file_index=2)
    killed_meta.unlink()  # as if the run died before episode 2's row file was renamed in
    stray = tmp_path / "videos/observation.images.image/chunk-000/.file-003.mp4.99.abcd.tmp"
    stray.write_bytes(b"partial")
    assert writer.completed_episodes() == {0, 1}
    writer.finalize(TASKS)  # episodes 0 and 1 only
    assert LeRobotDataset(tmp_path).num_episodes == 2

    removed = {p.relative_to(tmp_path).as_posix() for p in writer.remove_partial()}
    assert removed == {
        "data/chunk-000/file-002.parquet",
        "videos/observation.images.image/chunk-000/file-002.mp4",
        "videos/observation.images.wrist/chunk-000/file-002.mp4",
        stray.relative_to(tmp_path).as_posix(),
    }
    assert (tmp_path / "data/chunk-000/file-001.parquet").is_file()

    resumed = LeRobotWriter(tmp_path, FPS)
    for e in (2, 3):
        resumed.write_episode(make_record(e), task_index=e % 2)
    ds = resumed.finalize(TASKS)
    assert ds.num_episodes == 4 and ds.stats["action"]["count"] == [
        sum(make_record(e).num_steps for e in range(4))
    ]
    index = np.concatenate([ds.column(e, "index") for e in range(4)])
    np.testing.assert_array_equal(index, np.arange(ds.num_frames))


def test_finalize_refuses_missing_episode(tmp_path):
    writer = LeRobotWriter(tmp_path, FPS)
    for e in (0, 2):
        writer.write_episode(make_record(e), task_index=0)
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        writer.finalize(TASKS)


def test_finalize_refuses_wrong_task_index(tmp_path):
    writer = LeRobotWriter(tmp_path, FPS)
    writer.write_episode(make_record(0), task_index=1)  # TASKS[1] is not episode 0's instruction
    with pytest.raises(ValueError, match="task_index"):
        writer.finalize(TASKS)


def test_resume_with_other_config_refused(tmp_path):
    LeRobotWriter(tmp_path, FPS, extra_info={"policy": "expert"})
    LeRobotWriter(tmp_path, FPS, extra_info={"policy": "expert"})  # same config: fine
    with pytest.raises(ValueError, match="wmgym"):
        LeRobotWriter(tmp_path, FPS, extra_info={"policy": "noisy"})


def _write_some(root: str, episodes: list[int]) -> None:
    writer = LeRobotWriter(root, FPS, extra_info={"workers": 2})
    for e in episodes:
        writer.write_episode(make_record(e, cameras=("image",)), task_index=e % 2)


def test_concurrent_writers(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_write_some, args=(str(tmp_path), list(range(k, 6, 2)))) for k in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    writer = LeRobotWriter(tmp_path, FPS, extra_info={"workers": 2})
    assert writer.completed_episodes() == set(range(6))
    ds = writer.finalize(TASKS)
    assert ds.num_episodes == 6 and ds.camera_keys == ["image"]
    for e in range(6):
        record = make_record(e, cameras=("image",))
        np.testing.assert_array_equal(ds.actions(e)[:-1], record.actions)
        assert mae(ds.frames(e), record.frames["image"]) < X264_MAE
    np.testing.assert_array_equal(
        np.concatenate([ds.column(e, "index") for e in range(6)]), np.arange(ds.num_frames)
    )


# ------------------------------------------------------------------------------------ corrupt datasets


@pytest.fixture
def small(tmp_path) -> Path:
    write_dataset(tmp_path, 2)
    return tmp_path


def test_truncated_data_parquet(small):
    path = small / "data/chunk-000/file-001.parquet"
    path.write_bytes(path.read_bytes()[:200])
    ds = LeRobotDataset(small)
    with pytest.raises(CorruptFileError) as info:
        ds.actions(1)
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_missing_data_parquet(small):
    path = small / "data/chunk-000/file-000.parquet"
    path.unlink()
    with pytest.raises(CorruptFileError, match="missing") as info:
        LeRobotDataset(small).states(0)
    assert info.value.path == str(path)


def test_truncated_episodes_table(small):
    path = small / EPISODES_PATH.format(chunk_index=0, file_index=1)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptFileError) as info:
        LeRobotDataset(small)
    assert info.value.path == str(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_video(small, damage):
    path = small / "videos/observation.images.wrist/chunk-000/file-001.mp4"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x00garbage" * 100)
    with pytest.raises(CorruptFileError) as info:
        LeRobotDataset(small).frames(1, "wrist")
    assert info.value.path == str(path)


def test_video_shorter_than_episodes_table(small):
    path = small / "videos/observation.images.image/chunk-000/file-000.mp4"
    encode_video(path, gradient_frames(3, seed=0), FPS)
    with pytest.raises(CorruptFileError, match=r"holds 3 frames .*expected 7") as info:
        LeRobotDataset(small).frames(0)
    assert info.value.path == str(path)


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (
            lambda info: {**info, "codebase_version": "v2.1"},
            UnsupportedDatasetError,
            "'v2.1' is not supported.*v3.0",
        ),
        (lambda info: "{not json", CorruptFileError, "not valid JSON"),
        (
            lambda info: {k: v for k, v in info.items() if k != "features"},
            CorruptFileError,
            "missing keys",
        ),
        (None, CorruptFileError, "file is missing"),
    ],
)
def test_bad_info_json(small, content, error, message):
    path = small / INFO_PATH
    if content is None:
        path.unlink()
    else:
        new = content(json.loads(path.read_text()))
        path.write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(error, match=message) as info:
        LeRobotDataset(small)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------ a user's dataset


def _user_codec() -> tuple[str, str, str]:
    """(encoder, pix_fmt, decoded codec name): AV1 when this FFmpeg can encode it."""
    try:
        av.codec.Codec("libsvtav1", "w")
        return "libsvtav1", "yuv420p", "av1"
    except Exception:  # pragma: no cover - depends on the PyAV build
        return "libx264", "yuv420p", "h264"


def test_reads_user_multi_episode_per_file_dataset(tmp_path):
    """Hand-built v3.0 dataset: 2 episodes in one parquet and one mp4, no wm-gym extras."""
    lengths, fps, side = [6, 9], 10, 64
    frames = gradient_frames(sum(lengths), seed=42, height=side, width=side)
    encoder, pix_fmt, codec = _user_codec()
    key = "observation.images.top"
    encode_video(
        tmp_path / f"videos/{key}/chunk-000/file-000.mp4",
        frames,
        fps,
        codec=encoder,
        pix_fmt=pix_fmt,
        crf=20,
    )

    n = sum(lengths)
    rng = np.random.default_rng(7)
    actions, states = (
        rng.normal(size=(n, 4)).astype(np.float32),
        rng.normal(size=(n, 3)).astype(np.float32),
    )
    episode_index = np.repeat([0, 1], lengths)
    frame_index = np.concatenate([np.arange(k) for k in lengths])
    data = pa.table(
        {
            "action": pa.array(list(actions), type=pa.list_(pa.float32())),
            "observation.state": pa.array(list(states), type=pa.list_(pa.float32())),
            "timestamp": pa.array((frame_index / fps).astype(np.float32)),
            "frame_index": frame_index,
            "episode_index": episode_index,
            "index": np.arange(n),
            "task_index": episode_index,
        }
    )
    (tmp_path / "data/chunk-000").mkdir(parents=True)
    pq.write_table(data, tmp_path / "data/chunk-000/file-000.parquet")

    bounds = np.concatenate([[0], np.cumsum(lengths)])
    episodes = pa.table(
        {
            "episode_index": [0, 1],
            "tasks": [["stack blocks"], ["wipe table"]],
            "length": lengths,
            "data/chunk_index": [0, 0],
            "data/file_index": [0, 0],
            "dataset_from_index": bounds[:-1],
            "dataset_to_index": bounds[1:],
            f"videos/{key}/chunk_index": [0, 0],
            f"videos/{key}/file_index": [0, 0],
            f"videos/{key}/from_timestamp": bounds[:-1] / fps,
            f"videos/{key}/to_timestamp": bounds[1:] / fps,
        }
    )
    (tmp_path / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(episodes, tmp_path / "meta/episodes/chunk-000/file-000.parquet")
    pd.DataFrame({"task_index": [0, 1]}, index=["stack blocks", "wipe table"]).to_parquet(
        tmp_path / "meta/tasks.parquet"
    )
    info = {
        "codebase_version": "v3.0",
        "robot_type": "so100",
        "fps": fps,
        "total_episodes": 2,
        "total_frames": n,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            "action": {"dtype": "float32", "shape": [4], "names": None},
            "observation.state": {"dtype": "float32", "shape": [3], "names": None},
            key: {
                "dtype": "video",
                "shape": [side, side, 3],
                "names": ["height", "width", "channels"],
            },
        },
    }
    (tmp_path / INFO_PATH).write_text(json.dumps(info))

    ds = LeRobotDataset(tmp_path)
    assert ds.camera_keys == ["top"] and ds.num_frames == n
    assert probe_video(ds.video_path(1, "top"))["codec"] == codec
    assert ds.instruction(1) == "wipe table" and ds.success(1) is None and ds.episode_meta(1) == {}
    np.testing.assert_array_equal(ds.actions(1), actions[6:])
    np.testing.assert_array_equal(ds.states(0), states[:6])
    assert ds.action_valid(1).all() and ds.success_per_step(0) is None
    assert mae(ds.frames(1, "top"), frames[6:]) < AV1_MAE
    assert mae(ds.frames(0, "top"), frames[:6]) < AV1_MAE
    assert mae(ds.frames(1, "top")[:6], frames[:6]) > 3 * AV1_MAE  # really the second episode

    arrays = ds.load_arrays("top", progress=False)
    assert arrays["frames"].shape == (n, side, side, 3) and arrays["actions"].shape == (n, 4)
    np.testing.assert_array_equal(arrays["task_index"], episode_index)
    np.testing.assert_allclose(
        ds.stats["action"]["mean"], actions.astype(np.float64).mean(0), rtol=1e-6
    )
    assert ds.stats["action"]["count"] == [n]  # no action_valid column: every row counts
    assert (tmp_path / STATS_PATH).is_file()  # computed and written on first use
