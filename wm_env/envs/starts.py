"""Start states for world-model episodes: where an episode begins and what it is asked to do.

A start is history frames plus an instruction, and the robot's state when known (world models
that condition on the state need it). Sources:

- a LeRobot v3 dataset directory: each episode's first frame, its instruction and its first
  ``observation.state``;
- a folder of PNG files, each with a JSON file of the same name beside it holding at least
  ``{"instruction": ...}`` (WorldGym's layout) and optionally ``"state": [...]``;
- Python objects: a list of frames ``(H, W, 3)`` / ``(l, H, W, 3)`` uint8, or of dicts
  ``{"frames": ..., "instruction": ..., "state": ...}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from wm_env.errors import CorruptFileError, WmGymError


@dataclass
class Start:
    """One start state."""

    frames: np.ndarray  # uint8 (l, H, W, 3)
    instruction: str
    start_id: str
    meta: dict[str, Any] = field(default_factory=dict)
    state: np.ndarray | None = None  # float32 (S,): the robot's state at the last frame


def checked_state(state: Any, where: str) -> np.ndarray | None:
    """A start's robot state as float32 ``(S,)`` (None stays None), or a clear error."""
    if state is None:
        return None
    try:
        array = np.asarray(state, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: state must be a list of numbers; got {state!r}") from None
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        raise ValueError(
            f"{where}: state must be a non-empty 1-D array of finite numbers; got {array!r}"
        )
    return array


class StartSet:
    """An indexable collection of :class:`Start`.

    Starts from a dataset are loaded lazily: :meth:`load` reads only the episode table, and a
    start's frame is decoded the first time it is indexed (then kept). A 1600-episode dataset
    loads in about 2 s this way, where decoding every episode's video took 50 s.
    """

    def __init__(self, starts: Sequence[Start | Callable[[], Start]]) -> None:
        if not starts:
            raise WmGymError("no start states: give a dataset, a folder of PNG+JSON, or frames")
        self._starts: list[Start | Callable[[], Start]] = list(starts)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> Start:
        if not -len(self) <= index < len(self):
            raise IndexError(f"start {index} out of range: there are {len(self)} start states")
        item = self._starts[index]
        if not isinstance(item, Start):  # a loader: decode once, keep the result
            item = self._starts[index] = item()
        return item

    @classmethod
    def load(
        cls, source: str | os.PathLike | Sequence | StartSet, camera: str = "image"
    ) -> StartSet:
        """Build from a dataset dir, a PNG+JSON folder, a list of frames or dicts, or a StartSet."""
        if isinstance(source, StartSet):
            return source
        if isinstance(source, (str, os.PathLike)):
            root = Path(source)
            if not root.exists():
                raise WmGymError(
                    f"start states {str(root)!r} do not exist (a LeRobot dataset dir or a folder of PNG+JSON)"
                )
            if (root / "meta" / "info.json").exists():
                return cls._from_dataset(root, camera)
            return cls._from_folder(root)
        return cls([_start_from_object(item, i) for i, item in enumerate(source)])

    @classmethod
    def _from_dataset(cls, root: Path, camera: str) -> StartSet:
        from wm_env.dataset.lerobot import LeRobotDataset

        dataset = LeRobotDataset(root)
        episodes = [int(ep) for ep in dataset.episode_ids]
        for video in sorted({dataset.video_path(ep, camera) for ep in episodes}):
            if not video.is_file():  # fail now, not at the first reset that needs it
                raise CorruptFileError(video, "video file is missing")
        return cls([partial(_dataset_start, dataset, ep, camera) for ep in episodes])

    @classmethod
    def _from_folder(cls, root: Path) -> StartSet:
        import imageio.v3 as iio

        starts = []
        for png in sorted(root.glob("*.png")):
            sidecar = png.with_suffix(".json")
            if not sidecar.exists():
                raise CorruptFileError(
                    sidecar,
                    f"missing: every start image needs a JSON with its instruction ({png.name})",
                )
            try:
                info = json.loads(sidecar.read_text())
            except json.JSONDecodeError as error:
                raise CorruptFileError(sidecar, f"not valid JSON ({error})") from None
            if not isinstance(info, dict):
                raise CorruptFileError(
                    sidecar,
                    f"must hold a JSON object with 'instruction'; got a {type(info).__name__}",
                )
            if not info.get("instruction"):
                raise CorruptFileError(sidecar, "has no 'instruction'")
            try:
                image = rgb_image(iio.imread(png))
            except Exception as error:  # a truncated or foreign file
                raise CorruptFileError(png, f"cannot read the image ({error})") from None
            try:
                state = checked_state(info.get("state"), str(sidecar))
            except ValueError as error:
                raise CorruptFileError(sidecar, str(error)) from None
            starts.append(
                Start(image[None].astype(np.uint8), info["instruction"], png.stem, info, state)
            )
        if not starts:
            raise WmGymError(f"{root} holds no *.png start images (and is not a LeRobot dataset)")
        return cls(starts)


def rgb_image(image: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 3)`` from a read image: grey ``(H, W)`` or ``(H, W, 1)`` repeated, an
    alpha channel dropped."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels; got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected a grey, RGB or RGBA image; got shape {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _dataset_start(dataset, ep: int, camera: str) -> Start:
    """Episode ``ep``'s first frame and instruction (a lazy :class:`StartSet` entry)."""
    meta = dataset.episode_meta(ep)
    state = None
    if "observation.state" in dataset.info.get("features", {}):
        state = dataset.states(ep)[0]
    return Start(
        dataset.frames(ep, camera, count=1),
        dataset.instruction(ep),
        f"{dataset.root.name}/{ep}",
        {"episode": ep, "family": meta.get("family")},
        state,
    )


def _start_from_object(item: Any, index: int) -> Start:
    if isinstance(item, Start):
        return item
    instruction, state = "", None
    if isinstance(item, dict):
        instruction = item.get("instruction", "")
        state = checked_state(item.get("state"), f"start {index}")
        item = item.get("frames")
    frames = np.asarray(item)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"start {index}: frames must be uint8 (H, W, 3) or (l, H, W, 3); got {frames.dtype} {frames.shape}"
        )
    return Start(frames, instruction, str(index), state=state)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(..., H, W, 3)`` resized to ``size`` (area interpolation when shrinking)."""
    import cv2

    if frames.shape[-3:-1] == tuple(size):
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    h, w = size
    shrink = flat.shape[1] > h
    out = np.stack(
        [
            cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
            for f in flat
        ]
    )
    return out.reshape(*frames.shape[:-3], h, w, 3)
