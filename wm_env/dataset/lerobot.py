"""LeRobot **v3.0** datasets: a parallel-safe writer for our episodes and a reader for any v3.0 set.

On-disk layout (``root/``)::

    meta/info.json                                   schema, fps, path templates, totals
    meta/tasks.parquet                               index = task string, column task_index
    meta/stats.json                                  {feature: {mean, std, min, max, q01, q99, count}}
    meta/episodes/chunk-XXX/file-YYY.parquet         one row per episode (where its data/videos are)
    data/chunk-XXX/file-YYY.parquet                  one row per frame
    videos/observation.images.CAM/chunk-XXX/file-YYY.mp4

A user's v3.0 dataset packs many episodes per file; the reader only follows the episodes table
(``data/chunk_index``, ``videos/KEY/from_timestamp``, ...), so it reads those as well as ours.

Our writer stores ONE episode per file: episode ``e`` lives in chunk ``e // 1000``, file
``e % 1000`` for its data parquet, each video and its episodes-table row. Every file is written to
a hidden temp name and renamed into place, the episodes-table row last, so an episode is complete
iff its ``meta/episodes/...`` file exists. Workers writing different episodes never touch a shared
file; :meth:`LeRobotWriter.finalize` (one process, after all workers) writes the shared files.

Global frame indices: while episodes are written in parallel their global offsets are unknown, so
``index`` (data) and ``dataset_from_index`` / ``dataset_to_index`` (episodes table) hold ``-1``.
``finalize`` sorts episodes by ``episode_index``, takes ``dataset_from_index`` as the cumulative sum
of the preceding lengths, and rewrites (atomically) the data parquet and the episode row of every
episode whose stored offset differs. It is idempotent, so finalizing again after resuming and
adding episodes only rewrites what moved.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from wm_env.dataset.record import EpisodeRecord
from wm_env.dataset.video import (
    TMP_SUFFIX,
    atomic_output,
    decode_video,
    encode_video,
    probe_video,
    temp_path,
)
from wm_env.errors import CorruptFileError, UnknownNameError, WmGymError

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
RUN_CONFIG_PATH = "meta/wmgym_run.json"  # written once by the first writer; guards resumes
CAMERA_KEY_PREFIX = "observation.images."
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
STATS_FEATURES = ("action", "observation.state")
QUANTILES = {"q01": 0.01, "q99": 0.99}
EPISODE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index")  # required
UNSET_INDEX = -1  # global index placeholder until finalize()
VIDEO_CODEC, VIDEO_PIX_FMT, VIDEO_CRF = "libx264", "yuv444p", 10
_CHUNK_FILE_RE = re.compile(r"chunk-(\d+)/file-(\d+)\.(?:parquet|mp4)$")


class UnsupportedDatasetError(WmGymError, ValueError):
    """The dataset is valid but of a LeRobot version this reader does not read."""

    def __init__(self, path: object, version: object) -> None:
        hint = (
            "; convert it with LeRobot's lerobot.datasets.v30.convert_dataset_v21_to_v30"
            if str(version).startswith("v2")
            else ""
        )
        super().__init__(
            f"{path}: codebase_version {version!r} is not supported; only LeRobot "
            f"{CODEBASE_VERSION!r} datasets can be read{hint}"
        )


# ----------------------------------------------------------------------------- names and paths


def video_key(camera: str) -> str:
    """EpisodeRecord camera name -> LeRobot video feature key (``image`` -> ``observation.images.image``)."""
    return CAMERA_KEY_PREFIX + camera


def camera_name(key: str) -> str:
    """LeRobot video feature key -> short camera name (inverse of :func:`video_key`)."""
    return key[len(CAMERA_KEY_PREFIX) :] if key.startswith(CAMERA_KEY_PREFIX) else key


def chunk_file(episode_index: int) -> tuple[int, int]:
    """``(chunk_index, file_index)`` of episode ``e`` in our one-episode-per-file layout."""
    return divmod(int(episode_index), CHUNKS_SIZE)


def _episode_from_path(path: Path) -> int | None:
    match = _CHUNK_FILE_RE.search(path.as_posix())
    return int(match[1]) * CHUNKS_SIZE + int(match[2]) if match else None


# ----------------------------------------------------------------------------- file helpers


def _read_parquet(path: Path) -> pa.Table:
    """Read a parquet file; a missing or unreadable one raises :class:`CorruptFileError`."""
    if not path.is_file():
        raise CorruptFileError(path, "parquet file is missing")
    try:
        with pq.ParquetFile(path) as file:  # ~2x faster than pq.read_table for small files
            return file.read()
    except (pa.ArrowException, OSError) as exc:
        raise CorruptFileError(path, f"cannot read parquet (truncated or corrupt?): {exc}") from exc


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def _read_json(path: Path, missing_hint: str = "") -> Any:
    if not path.is_file():
        raise CorruptFileError(path, f"file is missing{missing_hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(path, f"not valid JSON: {exc}") from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_json(obj: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=4, default=_json_default), encoding="utf-8")


def _to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow column -> numpy; list columns become ``(rows, D)``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if (
        pa.types.is_list(column.type)
        or pa.types.is_large_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
    ):
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
    return column.to_numpy(zero_copy_only=False)


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    """float32 ``(T, D)`` -> arrow ``fixed_size_list<float32>[D]`` (how LeRobot stores vectors)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def feature_stats(values: np.ndarray) -> dict[str, list]:
    """Per-dimension ``mean, std, min, max, q01, q99`` and ``count`` of ``values (N, D)`` or ``(N,)``."""
    if len(values) == 0:
        raise ValueError("cannot compute statistics of zero rows")
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)  # (N, D)
    stats = {
        "mean": values.mean(0),
        "std": values.std(0),
        "min": values.min(0),
        "max": values.max(0),
        **{name: np.quantile(values, q, axis=0) for name, q in QUANTILES.items()},
    }
    return {**{k: v.tolist() for k, v in stats.items()}, "count": [len(values)]}


def load_info(root: Path) -> dict:
    """Read and validate ``meta/info.json`` of a v3.0 dataset."""
    path = Path(root) / INFO_PATH
    info = _read_json(path, "; not a LeRobot dataset root, or a dataset that was never finalized")
    if not isinstance(info, dict):
        raise CorruptFileError(path, f"expected a JSON object, got {type(info).__name__}")
    missing = [k for k in ("codebase_version", "fps", "features", "data_path") if k not in info]
    if missing:
        raise CorruptFileError(path, f"missing keys {missing}")
    if not str(info["codebase_version"]).startswith("v3."):
        raise UnsupportedDatasetError(path, info["codebase_version"])
    return info


def read_episodes_table(root: Path) -> pd.DataFrame:
    """All rows of ``meta/episodes/*/*.parquet``, sorted by ``episode_index`` (RangeIndex)."""
    paths = sorted((Path(root) / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not paths:
        raise CorruptFileError(Path(root) / "meta" / "episodes", "no episodes table files")
    tables = [_read_parquet(p) for p in paths]
    for path, table in zip(paths, tables, strict=True):
        missing = [c for c in EPISODE_COLUMNS if c not in table.column_names]
        if missing:
            raise CorruptFileError(path, f"episodes table lacks columns {missing}")
    table = pa.concat_tables(tables, promote_options="permissive")
    frame = table.to_pandas()
    return frame.sort_values("episode_index", kind="stable").reset_index(drop=True)


def load_tasks(root: Path) -> pd.DataFrame:
    """``meta/tasks.parquet`` as a DataFrame indexed by task string with column ``task_index``."""
    path = Path(root) / TASKS_PATH
    tasks = _read_parquet(path).to_pandas()
    if "task" in tasks.columns:
        tasks = tasks.set_index("task")
    if "task_index" not in tasks.columns:
        raise CorruptFileError(path, f"no task_index column; columns are {list(tasks.columns)}")
    return tasks


# ----------------------------------------------------------------------------- writer


def _episode_data_table(record: EpisodeRecord, task_index: int, fps: float) -> pa.Table:
    """The ``T + 1`` data rows of one episode; ``index`` is :data:`UNSET_INDEX` until finalize."""
    n_rows = record.num_steps + 1
    frame_index = np.arange(n_rows, dtype=np.int64)
    actions = np.concatenate([record.actions, np.zeros((1, record.actions.shape[1]))])  # (T+1, 7)
    action_valid = frame_index < record.num_steps
    return pa.table(
        {
            "action": _fixed_list(actions),
            "observation.state": _fixed_list(record.states),
            "timestamp": pa.array((frame_index / fps).astype(np.float32)),
            "frame_index": pa.array(frame_index),
            "episode_index": pa.array(np.full(n_rows, record.episode_index, np.int64)),
            "index": pa.array(np.full(n_rows, UNSET_INDEX, np.int64)),
            "task_index": pa.array(np.full(n_rows, task_index, np.int64)),
            "next.success": pa.array(np.asarray(record.success_per_step, dtype=bool)),
            "next.done": pa.array(frame_index == n_rows - 1),
            "action_valid": pa.array(action_valid),
        }
    )


def _episode_meta_table(record: EpisodeRecord, fps: float) -> pa.Table:
    """The one-row episodes-table file of an episode in our one-episode-per-file layout."""
    chunk, file = chunk_file(record.episode_index)
    length = record.num_steps + 1
    row: dict[str, Any] = {
        "episode_index": record.episode_index,
        "tasks": [record.instruction],
        "length": length,
        "data/chunk_index": chunk,
        "data/file_index": file,
        "dataset_from_index": UNSET_INDEX,
        "dataset_to_index": UNSET_INDEX,
    }
    for camera in sorted(record.frames):
        prefix = f"videos/{video_key(camera)}/"
        row |= {
            prefix + "chunk_index": chunk,
            prefix + "file_index": file,
            prefix + "from_timestamp": 0.0,
            prefix + "to_timestamp": length / fps,
        }
    row |= {
        "meta/episodes/chunk_index": chunk,
        "meta/episodes/file_index": file,
        "success": bool(record.success),
        "instruction": record.instruction,
        "meta_json": json.dumps(record.meta, sort_keys=True, default=_json_default),
    }
    return pa.Table.from_pylist([row])


class LeRobotWriter:
    """Write our episodes into a LeRobot v3.0 dataset, one episode per file, from many processes.

    Typical use: each worker calls :meth:`write_episode` for the episodes it owns; a killed run is
    resumed by calling :meth:`remove_partial` (with no writer running) and skipping
    :meth:`completed_episodes`; one process calls :meth:`finalize` at the end.

    The first writer of a root records ``fps``, ``robot_type``, ``state_names`` and ``extra_info``
    in ``meta/wmgym_run.json``; a later writer with different values raises ``ValueError``, so a
    resumed run cannot silently mix configurations. ``extra_info`` is also stored under the key
    ``"wmgym"`` of ``info.json``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fps: float,
        robot_type: str = "panda",
        state_names: Sequence[str] | None = None,
        extra_info: dict | None = None,
    ) -> None:
        self.root = Path(root)
        self.fps = fps
        self.robot_type = robot_type
        self.state_names = list(state_names) if state_names is not None else None
        self.extra_info = dict(extra_info or {})
        self._claim_run_config()

    # -- run config --------------------------------------------------------------------------

    def _run_config(self) -> dict:
        config = {
            "fps": self.fps,
            "robot_type": self.robot_type,
            "state_names": self.state_names,
            "wmgym": self.extra_info,
        }
        return json.loads(json.dumps(config, default=_json_default))  # tuples -> lists, etc.

    def _claim_run_config(self) -> None:
        """Create ``meta/wmgym_run.json`` if absent (atomically), else check it matches ours."""
        path = self.root / RUN_CONFIG_PATH
        config = self._run_config()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_path(path)
            tmp.write_text(json.dumps(config, indent=4), encoding="utf-8")
            try:
                os.link(tmp, path)  # atomic create-if-absent: loses cleanly to a concurrent writer
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        stored = _read_json(path)
        if stored != config:
            diff = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            raise ValueError(
                f"{self.root} was started with a different configuration (differs in {diff}): "
                f"stored {stored!r}, this writer {config!r}; use a new root or the same settings"
            )

    # -- paths --------------------------------------------------------------------------------

    def _data_path(self, episode_index: int) -> Path:
        chunk, file = chunk_file(episode_index)
        return self.root / DATA_PATH.format(chunk_index=chunk, file_index=file)

    def _video_path(self, episode_index: int, camera: str) -> Path:
        chunk, file = chunk_file(episode_index)
        return self.root / VIDEO_PATH.format(
            video_key=video_key(camera), chunk_index=chunk, file_index=file
        )

    def _meta_path(self, episode_index: int) -> Path:
        chunk, file = chunk_file(episode_index)
        return self.root / EPISODES_PATH.format(chunk_index=chunk, file_index=file)

    # -- writing ------------------------------------------------------------------------------

    def write_episode(self, record: EpisodeRecord, task_index: int) -> None:
        """Write one episode: data parquet, one mp4 per camera, then its episodes-table row.

        ``task_index`` is the index of ``record.instruction`` in the task list later given to
        :meth:`finalize`. Rewriting an existing episode first removes its row file, so a crash
        mid-rewrite leaves it incomplete rather than inconsistent.
        """
        if record.episode_index < 0 or task_index < 0:
            raise ValueError(
                f"episode_index and task_index must be >= 0; got {record.episode_index}, {task_index}"
            )
        meta_path = self._meta_path(record.episode_index)
        meta_path.unlink(missing_ok=True)
        _write_parquet(
            _episode_data_table(record, task_index, self.fps), self._data_path(record.episode_index)
        )
        for camera, frames in sorted(record.frames.items()):
            encode_video(
                self._video_path(record.episode_index, camera),
                frames,
                self.fps,
                codec=VIDEO_CODEC,
                pix_fmt=VIDEO_PIX_FMT,
                crf=VIDEO_CRF,
            )
        _write_parquet(_episode_meta_table(record, self.fps), meta_path)

    def completed_episodes(self) -> set[int]:
        """Indices of episodes whose episodes-table file exists (i.e. fully written)."""
        paths = (self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet")
        return {e for e in map(_episode_from_path, paths) if e is not None}

    def discard_episodes(self, episodes: Sequence[int]) -> list[Path]:
        """Delete every file of ``episodes`` (data, videos, episode table), so that a resumed
        run records them again; return the deleted paths. Call only with no writer running."""
        wanted, removed = set(int(e) for e in episodes), []
        for top in ("data", "videos", "meta/episodes"):
            for path in sorted((self.root / top).rglob("*")):
                if path.is_file() and _episode_from_path(path) in wanted:
                    path.unlink()
                    removed.append(path)
        return removed

    def remove_partial(self) -> list[Path]:
        """Delete data/video files of incomplete episodes and stray temp files; return them.

        Call only while no writer is running on this root (a live writer's files look partial).
        """
        complete = self.completed_episodes()
        removed = []
        for top in ("data", "videos", "meta"):
            for path in sorted((self.root / top).rglob("*")):
                episode = _episode_from_path(path)
                stale = path.name.endswith(TMP_SUFFIX) or (
                    top != "meta" and episode is not None and episode not in complete
                )
                if path.is_file() and stale:
                    path.unlink()
                    removed.append(path)
        return removed

    # -- finalize -------------------------------------------------------------------------------

    def finalize(self, tasks: Sequence[str]) -> LeRobotDataset:
        """Write ``info.json``, ``tasks.parquet``, ``stats.json`` and fix global frame indices.

        Args:
            tasks: all task strings; ``tasks[i]`` is task_index ``i`` as passed to
                :meth:`write_episode`.

        Returns:
            The finished dataset, opened for reading.

        Raises:
            ValueError: episodes are missing (indices must be ``0..N-1``), an episode's
                instruction is not among ``tasks`` or was written with another task_index.
        """
        episodes = read_episodes_table(self.root)
        _check_contiguous(episodes["episode_index"].to_numpy(), self.root)
        if episodes.filter(like="videos/").isna().any().any():
            raise ValueError(f"{self.root}: episodes were written with different camera sets")
        unknown = sorted(set(episodes["instruction"]) - set(tasks))
        if unknown or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be unique and cover every instruction; missing {unknown}")
        lengths = episodes["length"].to_numpy(np.int64)
        self._fix_global_indices(episodes, lengths, list(tasks))
        tasks_df = pd.DataFrame(
            {"task_index": np.arange(len(tasks), dtype=np.int64)},
            index=pd.Index(list(tasks), name="task"),
        )
        _write_parquet(pa.Table.from_pandas(tasks_df), self.root / TASKS_PATH)
        (self.root / STATS_PATH).unlink(missing_ok=True)  # stale after a resume; recomputed below
        _write_json(self._info(episodes, lengths, len(tasks)), self.root / INFO_PATH)
        dataset = LeRobotDataset(self.root)
        _ = dataset.stats  # computes and writes meta/stats.json
        return dataset

    def _fix_global_indices(
        self, episodes: pd.DataFrame, lengths: np.ndarray, tasks: list[str]
    ) -> None:
        """Rewrite ``index`` / ``dataset_{from,to}_index`` of episodes whose offset is stale.

        Every rewritten episode (all of them on a first finalize) also has its data
        ``task_index`` checked against ``tasks.index(instruction)``.
        """
        starts = np.cumsum(lengths) - lengths  # (E,)
        stale = episodes["dataset_from_index"].to_numpy() != starts
        for e, start, length, instruction in zip(
            episodes["episode_index"][stale],
            starts[stale],
            lengths[stale],
            episodes["instruction"][stale],
            strict=True,
        ):
            data_path = self._data_path(e)
            table = _read_parquet(data_path)
            if not (_to_numpy(table.column("task_index")) == tasks.index(instruction)).all():
                raise ValueError(
                    f"{data_path}: task_index differs from tasks.index({instruction!r}) = "
                    f"{tasks.index(instruction)}; pass finalize() the task list used when writing"
                )
            column = pa.array(np.arange(start, start + length, dtype=np.int64))
            table = table.set_column(table.schema.get_field_index("index"), "index", column)
            _write_parquet(table, data_path)
            meta = _read_parquet(self._meta_path(e))
            for name, value in (
                ("dataset_from_index", start),
                ("dataset_to_index", start + length),
            ):
                meta = meta.set_column(
                    meta.schema.get_field_index(name), name, pa.array([value], pa.int64())
                )
            _write_parquet(meta, self._meta_path(e))

    def _info(self, episodes: pd.DataFrame, lengths: np.ndarray, num_tasks: int) -> dict:
        """Build ``info.json`` from the first episode's files (shapes, codec) and the totals."""
        first = int(episodes["episode_index"].iloc[0])
        data = _read_parquet(self._data_path(first))
        state_dim = _to_numpy(data.column("observation.state")).shape[1]
        if self.state_names is not None and len(self.state_names) != state_dim:
            raise ValueError(f"{len(self.state_names)} state_names for {state_dim}-dim states")
        cameras = [
            camera_name(c.split("/")[1]) for c in episodes.columns if c.endswith("/from_timestamp")
        ]
        features: dict[str, dict] = {
            "action": {"dtype": "float32", "shape": [len(ACTION_NAMES)], "names": ACTION_NAMES},
            "observation.state": {
                "dtype": "float32",
                "shape": [state_dim],
                "names": self.state_names,
            },
            **{video_key(c): self._video_feature(self._video_path(first, c)) for c in cameras},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
            "next.success": {"dtype": "bool", "shape": [1], "names": None},
            "next.done": {"dtype": "bool", "shape": [1], "names": None},
            "action_valid": {"dtype": "bool", "shape": [1], "names": None},
        }
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(episodes),
            "total_frames": int(lengths.sum()),
            "total_tasks": num_tasks,
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
            "fps": self.fps,
            "splits": {"train": f"0:{len(episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if cameras else None,
            "features": features,
            "wmgym": self.extra_info,
        }

    def _video_feature(self, path: Path) -> dict:
        probe = probe_video(path)
        return {
            "dtype": "video",
            "shape": [probe["height"], probe["width"], 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": probe["height"],
                "video.width": probe["width"],
                "video.codec": probe["codec"],
                "video.pix_fmt": probe["pix_fmt"],
                "video.is_depth_map": False,
                "video.fps": self.fps,
                "video.channels": 3,
                "has_audio": False,
            },
        }


def _check_contiguous(episode_index: np.ndarray, root: Path) -> None:
    missing = sorted(set(range(len(episode_index))) - set(episode_index.tolist()))
    if missing or len(np.unique(episode_index)) != len(episode_index):
        raise ValueError(
            f"{root}: episodes must be 0..N-1 with none missing; missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} (complete them before finalize)"
        )


# ----------------------------------------------------------------------------- reader


class LeRobotDataset:
    """Read-only access to a LeRobot v3.0 dataset on disk (ours or any user's).

    Attributes:
        root: dataset root directory.
        info: parsed ``meta/info.json``.
        fps: frames per second.
        episodes: the episodes table (one row per episode, sorted by ``episode_index``).
        tasks: ``meta/tasks.parquet`` indexed by task string, column ``task_index``.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.info = load_info(self.root)
        self.fps = self.info["fps"]
        self.episodes = read_episodes_table(self.root)
        self.tasks = load_tasks(self.root)
        self._position = {int(e): i for i, e in enumerate(self.episodes["episode_index"])}
        features = self.info["features"]
        self._camera_keys = {
            camera_name(key): key for key, ft in features.items() if ft.get("dtype") == "video"
        }
        self._data_cache: tuple[Path, pa.Table] | None = None  # last data file read
        self._rows_cache: tuple[int, pa.Table] | None = None  # last episode's rows
        self._stats: dict | None = None

    # -- overview -------------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        """Number of episodes."""
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        """Total number of frames (data rows) over all episodes."""
        return int(self.episodes["length"].sum())

    @property
    def episode_ids(self) -> np.ndarray:
        """int64 ``(E,)`` episode indices, sorted."""
        return self.episodes["episode_index"].to_numpy(np.int64)

    @property
    def camera_keys(self) -> list[str]:
        """Short camera names (``"image"`` for ``observation.images.image``)."""
        return list(self._camera_keys)

    def camera_key(self, camera: str) -> str:
        """Video feature key of a short camera name; unknown names raise with a suggestion."""
        if camera in self._camera_keys.values():
            return camera
        if camera not in self._camera_keys:
            raise UnknownNameError("camera", camera, self._camera_keys)
        return self._camera_keys[camera]

    def _row(self, ep: int) -> pd.Series:
        if ep not in self._position:
            raise IndexError(f"episode {ep} is not in {self.root} ({self.num_episodes} episodes)")
        return self.episodes.iloc[self._position[ep]]

    def length(self, ep: int) -> int:
        """Number of frames of episode ``ep``."""
        return int(self._row(ep)["length"])

    # -- per-episode metadata -------------------------------------------------------------------

    def instruction(self, ep: int) -> str:
        """Language instruction of ``ep`` (our ``instruction`` column, else its first task)."""
        row = self._row(ep)
        if "instruction" in row.index and isinstance(row["instruction"], str):
            return row["instruction"]
        return str(list(row["tasks"])[0])

    def episode_meta(self, ep: int) -> dict:
        """The EpisodeRecord ``meta`` stored with ``ep`` (``{}`` for datasets without one)."""
        row = self._row(ep)
        text = row.get("meta_json")
        return json.loads(text) if isinstance(text, str) and text else {}

    def success(self, ep: int) -> bool | None:
        """Whether ``ep`` ended in success, or ``None`` if the dataset does not say."""
        value = self._row(ep).get("success")
        return None if value is None or pd.isna(value) else bool(value)

    # -- per-episode arrays ---------------------------------------------------------------------

    def _data_path(self, ep: int) -> Path:
        row = self._row(ep)
        rel = self.info["data_path"].format(
            chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
        )
        return self.root / rel

    def video_path(self, ep: int, camera: str = "image") -> Path:
        """Path of the mp4 holding ``camera`` frames of ``ep``."""
        key, row = self.camera_key(camera), self._row(ep)
        rel = self.info["video_path"].format(
            video_key=key,
            chunk_index=int(row[f"videos/{key}/chunk_index"]),
            file_index=int(row[f"videos/{key}/file_index"]),
        )
        return self.root / rel

    def _read_data_file(self, path: Path) -> pa.Table:
        if self._data_cache is None or self._data_cache[0] != path:
            self._data_cache = (path, _read_parquet(path))
        return self._data_cache[1]

    def _episode_rows(self, ep: int) -> pa.Table:
        """The data rows of ``ep`` (checked against the episodes table's ``length``)."""
        if self._rows_cache is not None and self._rows_cache[0] == ep:
            return self._rows_cache[1]
        path = self._data_path(ep)
        table = self._read_data_file(path)
        rows = table.filter(pc.equal(table["episode_index"], ep))
        if rows.num_rows != self.length(ep):
            raise CorruptFileError(
                path,
                f"holds {rows.num_rows} rows of episode {ep}; the episodes table says {self.length(ep)}",
            )
        self._rows_cache = (ep, rows)
        return rows

    def column(self, ep: int, name: str) -> np.ndarray:
        """Data column ``name`` of ``ep`` as numpy (list columns become ``(len, D)``)."""
        rows = self._episode_rows(ep)
        if name not in rows.column_names:
            raise UnknownNameError("column", name, rows.column_names)
        return _to_numpy(rows.column(name))

    def actions(self, ep: int) -> np.ndarray:
        """float32 ``(len, D)`` actions of ``ep`` (our last row is the null action; see action_valid)."""
        return self.column(ep, "action").astype(np.float32)

    def states(self, ep: int) -> np.ndarray:
        """float32 ``(len, S)`` ``observation.state`` of ``ep``."""
        return self.column(ep, "observation.state").astype(np.float32)

    def action_valid(self, ep: int) -> np.ndarray:
        """bool ``(len,)``: whether each row's action is real (all True for datasets without the column)."""
        if "action_valid" in self._episode_rows(ep).column_names:
            return self.column(ep, "action_valid").astype(bool)
        return np.ones(self.length(ep), dtype=bool)

    def success_per_step(self, ep: int) -> np.ndarray | None:
        """bool ``(len,)`` success predicate per frame (``next.success``), or None if absent."""
        if "next.success" not in self._episode_rows(ep).column_names:
            return None
        return self.column(ep, "next.success").astype(bool)

    def frames(self, ep: int, camera: str = "image", count: int | None = None) -> np.ndarray:
        """uint8 ``(len, H, W, 3)`` frames of ``ep`` from ``camera``.

        ``count`` decodes only the episode's first ``count`` frames (all when it is None or
        larger than the episode): a start state needs one frame, not the whole video.
        """
        if count is not None and count < 1:
            raise ValueError(f"count must be >= 1; got {count}")
        key, row = self.camera_key(camera), self._row(ep)
        length = self.length(ep)
        return decode_video(
            self.video_path(ep, camera),
            expected_frames=length if count is None else min(count, length),
            from_timestamp=float(row[f"videos/{key}/from_timestamp"]),
            to_timestamp=float(row[f"videos/{key}/to_timestamp"]),
        )

    # -- statistics -----------------------------------------------------------------------------

    @property
    def stats(self) -> dict:
        """``meta/stats.json``; computed with :meth:`compute_stats` and written if absent."""
        if self._stats is None:
            path = self.root / STATS_PATH
            if path.is_file():
                self._stats = _read_json(path)
            else:
                self._stats = self.compute_stats()
                try:
                    _write_json(self._stats, path)
                except OSError:  # read-only dataset: keep the stats in memory
                    pass
        return self._stats

    def compute_stats(self) -> dict:
        """Stats of ``action`` (rows with ``action_valid`` only) and ``observation.state``."""
        columns: dict[str, list[np.ndarray]] = {
            name: [] for name in (*STATS_FEATURES, "action_valid")
        }
        for path in self._data_files():
            table = self._read_data_file(path)
            for name in columns:
                if name in table.column_names:
                    columns[name].append(_to_numpy(table.column(name)))
        values = {name: np.concatenate(parts) for name, parts in columns.items() if parts}
        if "action_valid" in values and "action" in values:
            values["action"] = values["action"][values.pop("action_valid").astype(bool)]
        return {name: feature_stats(values[name]) for name in STATS_FEATURES if name in values}

    def _data_files(self) -> list[Path]:
        pairs = self.episodes[["data/chunk_index", "data/file_index"]].drop_duplicates()
        return [
            self.root / self.info["data_path"].format(chunk_index=int(c), file_index=int(f))
            for c, f in pairs.itertuples(index=False)
        ]

    # -- bulk loading ---------------------------------------------------------------------------

    def load_arrays(
        self, camera: str = "image", episodes: Iterable[int] | None = None, progress: bool = True
    ) -> dict[str, np.ndarray]:
        """Load whole episodes into contiguous arrays (N = total frames of the chosen episodes).

        Returns:
            ``frames`` uint8 (N, H, W, 3), ``actions`` float32 (N, D), ``action_valid`` bool (N,),
            ``episode_index`` int64 (N,), ``frame_index`` int64 (N,), ``task_index`` int64 (N,),
            ``states`` float32 (N, S) (``observation.state``; None when the dataset has none),
            and per episode (E,): ``episode_ids``, ``starts`` (offset of its first frame in N),
            ``lengths``.
        """
        self.camera_key(camera)  # fail fast on a bad camera
        ids = self.episode_ids if episodes is None else np.asarray(list(episodes), dtype=np.int64)
        lengths = np.array([self.length(int(e)) for e in ids], dtype=np.int64)  # (E,)
        starts = np.cumsum(lengths) - lengths  # (E,)
        frames: np.ndarray | None = None
        actions, valid, tasks, states = [], [], [], []
        with_states = "observation.state" in self.info.get("features", {})
        for i, ep in enumerate(tqdm(ids.tolist(), desc="loading episodes", disable=not progress)):
            video = self.frames(ep, camera)  # (len, H, W, 3)
            if frames is None:
                frames = np.empty((int(lengths.sum()), *video.shape[1:]), dtype=np.uint8)
            frames[starts[i] : starts[i] + lengths[i]] = video
            actions.append(self.actions(ep))
            valid.append(self.action_valid(ep))
            tasks.append(self.column(ep, "task_index").astype(np.int64))
            if with_states:
                states.append(self.states(ep))
        total = int(lengths.sum())
        return {
            "frames": frames if frames is not None else np.empty((0, 0, 0, 3), np.uint8),
            "actions": np.concatenate(actions) if actions else np.empty((0, 0), np.float32),
            "action_valid": np.concatenate(valid) if valid else np.empty(0, bool),
            "episode_index": np.repeat(ids, lengths),
            "frame_index": np.arange(total, dtype=np.int64) - np.repeat(starts, lengths),
            "task_index": np.concatenate(tasks) if tasks else np.empty(0, np.int64),
            "states": np.concatenate(states) if states else None,
            "episode_ids": ids,
            "starts": starts,
            "lengths": lengths,
        }
