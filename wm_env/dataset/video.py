"""MP4 video encoding and decoding with PyAV, plus the atomic-write helper the dataset layer uses.

Frames are always RGB ``uint8 (T, H, W, 3)`` in memory. Encoding writes ``frame i`` at
``pts = i / fps`` so frame times are exact multiples of the frame period; decoding selects frames
by their presentation time, which is how LeRobot v3 locates an episode inside a file that holds
several episodes one after the other (``from_timestamp`` / ``to_timestamp`` in the episodes table).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from wm_env.errors import CorruptFileError

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success ``os.replace`` it onto ``path``.

    The temporary name is hidden and ends in :data:`TMP_SUFFIX` (``.file-000.mp4.<pid>.<rand>.tmp``)
    so that globs for ``*.mp4`` / ``*.parquet`` never see a partial file and concurrent writers
    never collide. On an exception the temporary file is removed and nothing appears at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temp_path(path: Path) -> Path:
    """A unique hidden temporary name next to ``path`` (``.NAME.<pid>.<rand>.tmp``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def encode_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    codec: str = "libx264",
    pix_fmt: str = "yuv444p",
    crf: int = 10,
) -> None:
    """Encode RGB frames into an MP4 at ``path`` (written to a temp file, then renamed).

    Args:
        path: destination ``.mp4``.
        frames: uint8 ``(T, H, W, 3)`` RGB frames, ``T >= 1``.
        fps: frame rate; frame ``i`` gets presentation time ``i / fps``.
        codec: PyAV/FFmpeg encoder name (``libx264``, ``libsvtav1``, ...).
        pix_fmt: encoder pixel format; ``yuv444p`` keeps full colour resolution
            (``yuv420p`` needs even ``H`` and ``W``).
        crf: constant rate factor (lower is better quality).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T>=1, H, W, 3); got {frames.dtype} {frames.shape}")
    rate = _fps_fraction(fps)
    with atomic_output(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.options = {"crf": str(crf)}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush delayed frames


def probe_video(path: str | os.PathLike) -> dict:
    """Return ``{height, width, codec, pix_fmt, fps}`` of the first video stream of ``path``."""
    path = Path(path)
    _require_file(path)
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            ctx = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate
            return {
                "height": ctx.height,
                "width": ctx.width,
                "codec": ctx.codec.canonical_name,  # "h264", "av1" (not the decoder name)
                "pix_fmt": ctx.pix_fmt,
                "fps": float(rate) if rate else None,
            }
    except av.FFmpegError as exc:
        raise CorruptFileError(path, f"cannot read video: {exc}") from exc


def decode_video(
    path: str | os.PathLike,
    expected_frames: int | None = None,
    from_timestamp: float | None = None,
    to_timestamp: float | None = None,
) -> np.ndarray:
    """Decode an MP4 (any codec FFmpeg reads, e.g. H.264 or AV1) to RGB frames.

    Without timestamps the whole file is decoded. With ``from_timestamp`` / ``to_timestamp``
    (seconds) only frames whose presentation time ``t`` satisfies
    ``from - tol <= t < to - tol`` are kept (``tol`` is half a frame period), which is the
    LeRobot v3 convention for a file holding several episodes back to back. When
    ``expected_frames`` is given in range mode, decoding stops once that many frames are read.

    Returns:
        uint8 ``(T, H, W, 3)``.

    Raises:
        CorruptFileError: missing file, undecodable data, zero frames, or a frame count other
            than ``expected_frames``.
    """
    path = Path(path)
    _require_file(path)
    try:
        frames = _decode_frames(path, expected_frames, from_timestamp, to_timestamp)
    except av.FFmpegError as exc:
        raise CorruptFileError(path, f"cannot decode video: {exc}") from exc
    span = (
        ""
        if from_timestamp is None and to_timestamp is None
        else (f" between t={from_timestamp or 0:.4f}s and t={to_timestamp}s")
    )
    if not frames:
        raise CorruptFileError(path, f"video holds no frames{span}")
    if expected_frames is not None and len(frames) != expected_frames:
        raise CorruptFileError(
            path, f"video holds {len(frames)} frames{span}; expected {expected_frames}"
        )
    return np.stack(frames)


def _decode_frames(
    path: Path, expected: int | None, start: float | None, stop: float | None
) -> list[np.ndarray]:
    """Decode frames in ``[start, stop)`` (half-frame tolerance) as RGB arrays (H, W, 3)."""
    ranged = start is not None or stop is not None
    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or 30
        tol = 0.5 / float(rate)
        if start and start > tol:
            container.seek(int((start - tol) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            t = frame.time
            if ranged and t is None:
                raise CorruptFileError(
                    path, "frame without a presentation time; cannot select a range"
                )
            if start is not None and t < start - tol:
                continue
            if stop is not None and t >= stop - tol:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
            if ranged and expected is not None and len(frames) == expected:
                break
    return frames


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise CorruptFileError(path, "file has no video stream")
    return container.streams.video[0]


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise CorruptFileError(path, "video file is missing")
