"""Frames people look at: captions, verdict marks, GIF grids."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 ``(..., H, W, 3)`` frames by an integer factor."""
    if factor == 1:
        return frames
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def caption(
    frames: np.ndarray, text: str, success: bool | None = None, height: int = 28
) -> np.ndarray:
    """Add a caption bar (and a green check / red cross when ``success`` is given) under frames.

    Args:
        frames: uint8 ``(T, H, W, 3)``.
    Returns:
        uint8 ``(T, H + height, W, 3)``.
    """
    t, h, w, _ = frames.shape
    bar = np.full((height, w, 3), 255, dtype=np.uint8)
    scale = 0.36 if w < 300 else 0.5
    max_chars = max(8, int(w / (scale * 19)))
    lines = textwrap.wrap(text, max_chars)[:2]
    for i, line in enumerate(lines):
        cv2.putText(
            bar, line, (3, 11 + 12 * i), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA
        )
    if success is not None:
        mark = np.zeros((h, w, 3), dtype=np.uint8)
        color = (0, 170, 0) if success else (210, 0, 0)
        c = (w - 14, 14)
        if success:
            cv2.polylines(
                mark,
                [np.array([(c[0] - 7, c[1]), (c[0] - 2, c[1] + 6), (c[0] + 8, c[1] - 7)])],
                False,
                color,
                3,
                cv2.LINE_AA,
            )
        else:
            cv2.line(mark, (c[0] - 7, c[1] - 7), (c[0] + 7, c[1] + 7), color, 3, cv2.LINE_AA)
            cv2.line(mark, (c[0] - 7, c[1] + 7), (c[0] + 7, c[1] - 7), color, 3, cv2.LINE_AA)
        drawn = mark.any(axis=-1)
        frames = frames.copy()
        frames[-1][drawn] = mark[drawn]  # the verdict is shown on the last frame
    return np.concatenate([frames, np.broadcast_to(bar, (t, height, w, 3))], axis=1)


def grid(videos: Sequence[np.ndarray], columns: int, pad: int = 2) -> np.ndarray:
    """Tile videos of equal frame size into a grid; shorter ones hold their last frame.

    Args:
        videos: each uint8 ``(T_i, H, W, 3)``.
    Returns:
        uint8 ``(max T_i, rows * (H + pad), columns * (W + pad), 3)``.
    """
    if not videos:
        raise ValueError("grid needs at least one video")
    length = max(len(v) for v in videos)
    h, w = videos[0].shape[1:3]
    rows = -(-len(videos) // columns)
    out = np.full((length, rows * (h + pad), columns * (w + pad), 3), 255, dtype=np.uint8)
    for i, video in enumerate(videos):
        if video.shape[1:3] != (h, w):
            raise ValueError(f"video {i} has frame size {video.shape[1:3]}; expected {(h, w)}")
        held = np.concatenate([video, np.repeat(video[-1:], length - len(video), axis=0)])
        r, c = divmod(i, columns)
        out[:, r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = held
    return out


def save_gif(path: str | Path, frames: np.ndarray, fps: float = 5.0) -> Path:
    """Write uint8 ``(T, H, W, 3)`` frames as a looping GIF."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, duration=1000.0 / fps, loop=0)
    return path
