"""Image editors that put out-of-distribution distractors into a world model's start frames.

A world model imagines an episode from its start frames, so adding an object to those frames
tests whether a policy (and the model) is distracted by something it never saw in training. An
editor takes a ``uint8 (H, W, 3)`` image and a ``numpy`` generator and returns the edited image
with an :class:`EditRecord` saying what was added where:

- :class:`PasteDistractorEditor` (``"paste"``, the default; no weights): draws shaded balls,
  cylinders and capsules like the sim's distractor objects (or, with ``style="sprites"``,
  pastes crops of the real sim objects from ``wm_env/assets/distractor_sprites.npz``, made by
  ``python -m wm_env.editing``), in colors no task uses, and blends them onto free table
  space with ``cv2.seamlessClone``.
- :class:`InstructPix2PixEditor` (``"instruct-pix2pix"``) and :class:`InpaintEditor`
  (``"inpaint"``): diffusers pipelines loaded from a LOCAL directory (never downloaded).

Every editor here also has ``edit_many(frames, rng)``: one sampled edit applied to all the
history frames of a start (same objects, same places), and ``edit_with_seed`` to replay the
seed an :class:`EditRecord` holds. Importing this module imports neither torch nor diffusers.

Pasting here reduces to compositing up to +-1 grey level: the clone's source is the image
itself with the object composited in, so the guidance field equals the image's own gradients
wherever the object is not, and NORMAL_CLONE keeps the object's own colors (MIXED_CLONE would
let table texture show through the object). The clone smooths the rim; what keeps objects
believable is that they are only placed on bare table.
"""

from __future__ import annotations

import functools
import inspect
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from wm_env.errors import CorruptFileError, UnknownNameError, lookup, unknown_name_message
from wm_env.options import torch_dtype
from wm_env.sim.tasks import DISTRACTOR_COLORS, DISTRACTOR_KINDS, TASK_COLORS

SEED_BOUND = 2**31 - 1  # edit seeds are drawn in [0, SEED_BOUND) so torch accepts them
SUPERSAMPLE = 4  # drawn objects are rendered at 4x and area-downsampled (anti-aliasing)
CLONE_MARGIN_PX = 4  # seamlessClone erodes its mask by 3 px: the mask extends 4 px past the object
ALPHA_MARGIN_PX = 1
BLENDS = {"normal": cv2.NORMAL_CLONE, "mixed": cv2.MIXED_CLONE, "alpha": None}
FREE_REGIONS = ("table", "anywhere")
MAX_DIFF_BOXES = 8
STYLES = ("drawn", "sprites")
SPRITE_BANK_PATH = Path(__file__).resolve().parent / "assets" / "distractor_sprites.npz"
# Table positions (x, y in metres) the sprites are rendered at: the look changes with the view.
SPRITE_POSITIONS = ((0.06, -0.10), (0.06, 0.10), (-0.06, -0.02), (0.0, 0.0))


# ============================================================================ records, protocol
@dataclass
class EditRecord:
    """What an editor did to an image.

    Boxes are ``[x0, y0, x1, y1]`` pixel boxes (x1, y1 exclusive, like slicing) of what was
    added; ``seed`` replays the edit with the editor's ``edit_with_seed``.
    """

    editor: str
    prompt: str | None = None
    seed: int | None = None
    boxes: list[list[int]] = field(default_factory=list)
    count: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (numpy scalars and tuples become plain numbers and lists)."""
        return _jsonable(asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


@runtime_checkable
class ImageEditor(Protocol):
    """Edits one image; must not modify its input and must be deterministic given ``rng``."""

    name: str

    def edit(
        self, image: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, EditRecord]:  # uint8 (H, W, 3) -> uint8 (H, W, 3), record
        ...


def edit_frames(
    editor: ImageEditor, frames: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, EditRecord]:
    """Apply ONE edit to every frame of ``frames`` (uint8 ``(l, H, W, 3)``).

    Uses ``editor.edit_many`` when the editor has it (all editors of this module do). For an
    editor with only ``edit``, every frame is edited with a generator built from the same seed,
    which gives the same edit wherever the editor's random choices do not depend on the image.
    The record is the one of the last frame.
    """
    frames = _check_frames(frames)
    if hasattr(editor, "edit_many"):
        return editor.edit_many(frames, rng)
    seed = draw_seed(rng)
    out, record = [], None
    for frame in frames:
        edited, record = editor.edit(frame, np.random.default_rng(seed))
        out.append(edited)
    return np.stack(out), record


def draw_seed(rng: np.random.Generator) -> int:
    """One integer seed in ``[0, 2**31 - 1)`` drawn from ``rng``."""
    return int(rng.integers(0, SEED_BOUND))


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"an editor takes a uint8 (H, W, 3) image; got {image.dtype} {tuple(image.shape)}"
        )
    return image


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"edit_many takes uint8 (l, H, W, 3) frames; got {frames.dtype} {tuple(frames.shape)}"
        )
    return frames


class BaseEditor:
    """Shared plumbing: an edit draws one seed from ``rng`` and everything else from that seed.

    Subclasses implement ``_edit_frames(frames (l, H, W, 3), seed) -> (frames, record)``, which
    applies one edit to all frames and must not modify them.
    """

    name = ""

    def edit(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, EditRecord]:
        """Edit one uint8 ``(H, W, 3)`` image; returns a new array and the record."""
        image = _check_image(image)
        frames, record = self._edit_frames(image[None], draw_seed(rng))
        return frames[0], record

    def edit_many(
        self, frames: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, EditRecord]:
        """Apply one edit to every frame of uint8 ``(l, H, W, 3)`` ``frames``."""
        return self._edit_frames(_check_frames(frames), draw_seed(rng))

    def edit_with_seed(self, images: np.ndarray, seed: int) -> tuple[np.ndarray, EditRecord]:
        """Replay the edit of a record's ``seed`` on ``(H, W, 3)`` or ``(l, H, W, 3)`` images."""
        images = np.asarray(images)
        if images.ndim == 3:
            frames, record = self._edit_frames(_check_image(images)[None], int(seed))
            return frames[0], record
        return self._edit_frames(_check_frames(images), int(seed))

    def _edit_frames(self, frames: np.ndarray, seed: int) -> tuple[np.ndarray, EditRecord]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ============================================================================ free space
def table_mask(
    image: np.ndarray,
    min_brightness: float = 190.0,
    max_saturation: float = 40.0,
    max_std: float = 10.0,
    largest_component: bool = True,
) -> np.ndarray:
    """Bool ``(H, W)``: pixels that look like bare table (the sim's table is near white).

    A pixel is table-like when it is bright (channel mean >= ``min_brightness``), grey
    (max - min channel <= ``max_saturation``) and in a flat neighbourhood (local standard
    deviation of the brightness <= ``max_std``). With ``largest_component`` only the largest
    connected table-like region is kept, which drops bright bits of the robot.
    """
    image = _check_image(image).astype(np.float32)  # (H, W, 3)
    gray = image.mean(axis=-1)  # (H, W)
    saturation = image.max(axis=-1) - image.min(axis=-1)
    k = max(3, (min(gray.shape) // 32) | 1)  # 3 px at 64x64, 9 px at 256x256
    mean = cv2.blur(gray, (k, k))
    std = np.sqrt(np.maximum(cv2.blur(gray * gray, (k, k)) - mean * mean, 0.0))
    mask = (gray >= min_brightness) & (saturation <= max_saturation) & (std <= max_std)
    if largest_component and mask.any():
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 4)
        if count > 2:
            largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            mask = labels == largest
    return mask


def busyness(image: np.ndarray) -> np.ndarray:
    """Float ``(H, W)`` in [0, 1]: local brightness variation (0 on flat areas)."""
    gray = _check_image(image).astype(np.float32).mean(axis=-1)
    k = max(3, (min(gray.shape) // 32) | 1)
    mean = cv2.blur(gray, (k, k))
    std = np.sqrt(np.maximum(cv2.blur(gray * gray, (k, k)) - mean * mean, 0.0))
    return np.clip(std / 64.0, 0.0, 1.0)


def _box_sums(values: np.ndarray, height: int, width: int, border: int) -> np.ndarray:
    """Sums of ``values`` (H, W) over every ``height x width`` window whose top-left corner keeps
    the window ``border`` px inside the image: ``(ny, nx)``, index [y - border, x - border]."""
    H, W = values.shape
    integral = cv2.integral(values.astype(np.float64))  # (H + 1, W + 1)
    ys = np.arange(border, H - height - border + 1)
    xs = np.arange(border, W - width - border + 1)
    y0, x0 = ys[:, None], xs[None, :]
    return (
        integral[y0 + height, x0 + width]
        - integral[y0, x0 + width]
        - integral[y0 + height, x0]
        + integral[y0, x0]
    )


def choose_position(
    free: np.ndarray,
    busy: np.ndarray,
    occupied: np.ndarray,
    height: int,
    width: int,
    rng: np.random.Generator,
    border: int = 1,
) -> tuple[int, int, str]:
    """Top-left ``(x, y)`` of a ``height x width`` patch, and how it was chosen.

    ``"free"``: uniformly among the positions whose whole patch is ``free`` and not
    ``occupied`` (bool ``(H, W)`` maps). ``"least-busy"`` when there is none: the position with
    the least ``busy`` (float ``(H, W)``) and overlap with ``occupied``, ties broken at random.
    The patch always stays ``border`` px inside the image (``seamlessClone`` needs that).
    """
    H, W = free.shape
    if height + 2 * border > H or width + 2 * border > W:
        raise ValueError(f"a {height}x{width} patch does not fit in a {H}x{W} image")
    area = float(height * width)
    available = _box_sums(free & ~occupied, height, width, border) / area  # (ny, nx)
    ok = np.flatnonzero(available >= 1.0 - 1e-9)
    if ok.size:
        index, how = int(ok[rng.integers(ok.size)]), "free"
    else:
        cost = _box_sums(busy, height, width, border) / area
        cost = cost + 10.0 * _box_sums(occupied, height, width, border) / area
        best = np.flatnonzero(cost <= cost.min() + 1e-9)
        index, how = int(best[rng.integers(best.size)]), "least-busy"
    y, x = np.unravel_index(index, available.shape)
    return int(x) + border, int(y) + border, how


# ============================================================================ drawn objects
_LIGHT = np.array([-0.3, -0.75, 0.6]) / np.linalg.norm([-0.3, -0.75, 0.6])  # x right, y down
_HALF = (_LIGHT + np.array([0.0, 0.0, 1.0])) / np.linalg.norm(_LIGHT + np.array([0.0, 0.0, 1.0]))


def _shade(normals: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Lambert + Phong shading of unit ``normals`` (..., 3) for a base ``color`` (3,) in [0, 1]."""
    diffuse = np.clip((normals @ _LIGHT + 0.25) / 1.25, 0.0, 1.0)[..., None]  # wrapped Lambert
    specular = np.clip(normals @ _HALF, 0.0, 1.0)[..., None] ** 40
    return np.clip(color * (0.55 + 0.6 * diffuse) + 0.3 * specular, 0.0, 1.0)


def _unit(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    n = np.stack([x, y, z], axis=-1)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


def _sphere_normals(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Normals of a unit sphere seen from the front at normalised coords ``u, v`` in [-1, 1]."""
    z = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
    return _unit(u, v, z)


def _body_normals(u: np.ndarray) -> np.ndarray:
    """Normals of an upright cylinder's side at normalised ``u`` in [-1, 1] across it."""
    z = np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0))
    return _unit(u, np.zeros_like(u), z)


def draw_object(kind: str, color: Sequence[float], width: float) -> tuple[np.ndarray, np.ndarray]:
    """A shaded distractor ``kind`` of footprint ``width`` px, as seen by the sim's camera.

    Returns float32 ``rgb (h, w, 3)`` in [0, 1] and ``alpha (h, w)`` in [0, 1]: a ball is a
    shaded disc with a highlight, a capsule a standing stadium shape with round caps, a
    cylinder a standing body with a bright elliptic top.
    """
    kind = lookup("distractor kind", kind, {k: k for k in DISTRACTOR_KINDS})
    color = np.asarray(color, dtype=np.float32)[:3]
    w = max(3, int(round(width)))
    aspect = {"ball": 1.0, "capsule": 1.65, "cylinder": 1.45}[kind]  # as in the sim
    h = max(3, int(round(w * aspect)))
    s = SUPERSAMPLE
    ys, xs = np.mgrid[0 : h * s, 0 : w * s].astype(np.float32) + 0.5
    r = w * s / 2.0
    u = (xs - r) / r  # (h s, w s) in [-1, 1] across the object
    if kind == "ball":
        v = (ys - h * s / 2.0) / r
        inside = u * u + v * v <= 1.0
        normals = _sphere_normals(u, v)
    elif kind == "capsule":
        top, bottom = r, h * s - r  # centres of the two caps (pixels)
        v_top, v_bottom = (ys - top) / r, (ys - bottom) / r
        upper, lower = ys < top, ys > bottom
        inside = np.where(
            upper, u * u + v_top**2 <= 1, np.where(lower, u * u + v_bottom**2 <= 1, 1)
        )
        inside = inside.astype(bool) & (np.abs(u) <= 1.0)
        normals = np.where(
            upper[..., None],
            _sphere_normals(u, v_top),
            np.where(
                lower[..., None],
                _sphere_normals(u, v_bottom),
                _body_normals(u),
            ),
        )
    else:  # cylinder: elliptic top face over a vertical body with an elliptic bottom edge
        b = 0.24 * w * s  # semi-minor axis of the top and bottom ellipses
        top, bottom = b, h * s - b
        v_top, v_bottom = (ys - top) / b, (ys - bottom) / b
        top_face = u * u + v_top**2 <= 1.0
        body = (np.abs(u) <= 1.0) & (ys >= top) & ((ys <= bottom) | (u * u + v_bottom**2 <= 1.0))
        inside = top_face | body
        face = _unit(0.15 * u, np.full_like(u, -0.8), np.full_like(u, 0.6))
        normals = np.where(top_face[..., None], face, _body_normals(u))
    rgb = _shade(normals, color).astype(np.float32)  # (h s, w s, 3)
    alpha = inside.astype(np.float32)
    # Area-downsample premultiplied colour for clean anti-aliased edges.
    premultiplied = cv2.resize(rgb * alpha[..., None], (w, h), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA)
    rgb = premultiplied / np.maximum(alpha[..., None], 1e-6)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32), np.clip(alpha, 0.0, 1.0).astype(np.float32)


# ============================================================================ sim sprites
def render_sprite_bank(
    out_path: str | Path = SPRITE_BANK_PATH,
    resolution: int = 256,
    positions: Sequence[tuple[float, float]] = SPRITE_POSITIONS,
) -> Path:
    """Render every distractor kind in every distractor color with the ground-truth sim and
    save the crops as a compressed npz sprite bank (needs the ``sim`` extra).

    Each object is put alone on the table at each of ``positions`` and seen by the main camera
    at ``resolution``; its MuJoCo segmentation mask gives the alpha. Keys are
    ``"<kind>__<color>__<i>"`` -> uint8 RGBA ``(h, w, 4)``, plus ``"meta"`` (JSON bytes).
    """
    import mujoco

    from wm_env.sim.env import MAIN_CAMERA, TabletopEnv
    from wm_env.sim.scene import ROBOSUITE_CAMERAS
    from wm_env.sim.tasks import CENTRE_HEIGHT, TABLE_TOP_Z, EpisodeSpec, ObjectPlacement

    out_path = Path(out_path)
    env = TabletopEnv(family="lift", resolution=resolution, max_distractors=1)
    arrays: dict[str, np.ndarray] = {}
    try:
        scene = env.scene
        for kind in DISTRACTOR_KINDS:
            for color in DISTRACTOR_COLORS:
                for i, (x, y) in enumerate(positions):
                    name = f"{kind}0"
                    position = [float(x), float(y), TABLE_TOP_Z + CENTRE_HEIGHT[kind]]
                    spec = EpisodeSpec(
                        "lift",
                        "lift the red cube",
                        {"target": "cube0"},
                        [],
                        [ObjectPlacement(name, kind, color, position)],
                    )
                    obs, _ = env.reset(options={"spec": spec})
                    scene.make_render_context_current()
                    camera = ROBOSUITE_CAMERAS.get(MAIN_CAMERA, MAIN_CAMERA)
                    seg = scene.sim.render(
                        camera_name=camera, width=resolution, height=resolution, segmentation=True
                    )[::-1]  # (H, W, 2), top row first like the env's images
                    mask = (seg[..., 0] == mujoco.mjtObj.mjOBJ_GEOM) & np.isin(
                        seg[..., 1], scene.object_visual_geom_ids[name]
                    )
                    ys, xs = np.nonzero(mask)
                    if ys.size == 0:
                        raise RuntimeError(f"{kind} at {(x, y)} is not visible from the camera")
                    crop = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
                    rgba = np.dstack([obs["image"][crop], mask[crop].astype(np.uint8) * 255])
                    arrays[f"{kind}__{color}__{i}"] = rgba
    finally:
        env.close()
    meta = {"resolution": resolution, "positions": [list(p) for p in positions]}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **arrays)
    return out_path


@functools.lru_cache(maxsize=4)
def load_sprite_bank(path: str | Path = SPRITE_BANK_PATH) -> dict[tuple[str, str], list]:
    """``{(kind, color): [uint8 RGBA (h, w, 4), ...]}`` from :func:`render_sprite_bank`'s npz.

    Raises:
        FileNotFoundError: no sprite bank at ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sprite bank at {str(path)!r}; render one: render_sprite_bank")
    bank: dict[tuple[str, str], list] = {}
    with np.load(path) as data:
        for key in sorted(data.files):
            if key != "meta":
                kind, color, _ = key.split("__")
                bank.setdefault((kind, color), []).append(data[key])
    return bank


def sprite_object(rgba: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """A sprite (uint8 RGBA ``(h, w, 4)``) scaled to ``width`` px: float32 ``rgb (h', w', 3)``
    and ``alpha (h', w')``, like :func:`draw_object`."""
    h, w = rgba.shape[:2]
    new_w = max(3, int(round(width)))
    new_h = max(3, int(round(h * new_w / w)))
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    premultiplied = rgba[..., :3].astype(np.float32) / 255.0 * alpha[..., None]
    interpolation = cv2.INTER_AREA if new_w < w else cv2.INTER_LINEAR
    premultiplied = cv2.resize(premultiplied, (new_w, new_h), interpolation=interpolation)
    alpha = np.clip(cv2.resize(alpha, (new_w, new_h), interpolation=interpolation), 0.0, 1.0)
    rgb = premultiplied / np.maximum(alpha[..., None], 1e-6)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32), alpha.astype(np.float32)


def paste(
    image: np.ndarray,
    rgb: np.ndarray,
    alpha: np.ndarray,
    x: int,
    y: int,
    blend: str = "normal",
    margin: int = CLONE_MARGIN_PX,
) -> np.ndarray:
    """Paste ``rgb`` (h, w, 3) with ``alpha`` (h, w) at top-left ``(x, y)``; returns a new image.

    ``blend="normal"``/``"mixed"``: ``cv2.seamlessClone`` of the object composited over the
    image, with the object's mask dilated by ``margin`` px (the clone erodes its mask by 3 px
    and blends inside the mask's bounding box only). ``"alpha"``: plain alpha compositing.
    Pixels farther than ``margin`` px from the object's box are never changed. The caller keeps
    the dilated box 1 px inside the image.
    """
    image = _check_image(image)
    h, w = alpha.shape
    region = image[y : y + h, x : x + w].astype(np.float32) / 255.0  # (h, w, 3)
    a = alpha[..., None]
    composite = np.clip(np.rint((a * rgb + (1.0 - a) * region) * 255.0), 0, 255).astype(np.uint8)
    source = image.copy()
    source[y : y + h, x : x + w] = composite
    flag = BLENDS[blend]
    if flag is None:
        return source
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[y : y + h, x : x + w][alpha > 0.02] = 255
    # A square dilation: the clone's own erosion is by a 3x3 square, 3 times, so a round one
    # would cut the object's diagonal rim.
    mask = cv2.dilate(mask, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    bx, by, bw, bh = cv2.boundingRect(mask)
    # seamlessClone places the mask's bounding box centred on `center`: this centre puts it
    # back exactly where it is in `source` (integer halving as in OpenCV's code).
    center = (bx + bw // 2, by + bh // 2)
    return cv2.seamlessClone(source, image, mask, center, flag)


# ============================================================================ paste editor
class PasteDistractorEditor(BaseEditor):
    """Draws distractor objects (balls, cylinders, capsules in colors no task uses) onto free
    table space. Needs no weights.

    Args:
        count: objects per edit.
        kinds: object kinds to draw from (``DISTRACTOR_KINDS``).
        colors: color names from ``DISTRACTOR_COLORS`` (task colors are refused: the point is an
            object the policy has no reason to touch).
        min_size_frac, max_size_frac: object width as a fraction of the image's shorter side
            (the sim's balls are about 0.1 of it).
        free_region: ``"table"`` (bright, grey, flat pixels of the largest such region),
            ``"anywhere"``, or a callable ``image (H, W, 3) -> bool (H, W)`` of allowed pixels.
            Objects never overlap each other; when no free spot is left, the least busy spot is
            used and the record's ``params["fallback"]`` is true.
        blend: ``"normal"`` (``cv2.seamlessClone`` NORMAL_CLONE: opaque objects keep their
            colors while their rim blends into the table), ``"mixed"`` (MIXED_CLONE: lets table
            texture show through, more "decal" than object), or ``"alpha"``.
        style: ``"drawn"`` (shaded shapes, :func:`draw_object`) or ``"sprites"`` (crops of the
            real sim objects from :func:`render_sprite_bank`; when the bank file is missing
            the editor warns and draws, and the record says ``params["style"] == "drawn"``).
        sprite_path: the sprite bank (default: the one shipped in ``wm_env/assets``).
    """

    name = "paste"

    def __init__(
        self,
        count: int = 1,
        kinds: Sequence[str] = DISTRACTOR_KINDS,
        colors: Sequence[str] = tuple(DISTRACTOR_COLORS),
        min_size_frac: float = 0.08,
        max_size_frac: float = 0.12,
        free_region: str | Callable[[np.ndarray], np.ndarray] = "table",
        blend: str = "normal",
        style: str = "drawn",
        sprite_path: str | Path | None = None,
    ) -> None:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"count must be an integer >= 0; got {count!r}")
        if isinstance(kinds, str) or isinstance(colors, str):
            raise TypeError("kinds and colors are sequences of names, e.g. ('ball',)")
        if not kinds or not colors:
            raise ValueError("kinds and colors must not be empty")
        for kind in kinds:
            lookup("distractor kind", kind, {k: k for k in DISTRACTOR_KINDS})
        for color in colors:
            if color in TASK_COLORS:
                raise ValueError(
                    f"{color!r} is a task color; distractor colors are {sorted(DISTRACTOR_COLORS)}"
                )
            lookup("distractor color", color, DISTRACTOR_COLORS)
        if not 0.0 < min_size_frac <= max_size_frac < 0.5:
            raise ValueError(
                "need 0 < min_size_frac <= max_size_frac < 0.5; "
                f"got {min_size_frac!r}, {max_size_frac!r}"
            )
        if not callable(free_region) and free_region not in FREE_REGIONS:
            raise UnknownNameError("free region", str(free_region), FREE_REGIONS)
        lookup("blend", blend, BLENDS)
        lookup("style", style, {s: s for s in STYLES})
        self.sprites: dict[tuple[str, str], list] | None = None
        if style == "sprites":
            try:
                self.sprites = load_sprite_bank(Path(sprite_path or SPRITE_BANK_PATH))
            except FileNotFoundError as error:
                warnings.warn(f"{error}; drawing the distractors instead", stacklevel=2)
        self.style = "sprites" if self.sprites is not None else "drawn"
        self.count = int(count)
        self.kinds = tuple(kinds)
        self.colors = tuple(colors)
        self.min_size_frac = float(min_size_frac)
        self.max_size_frac = float(max_size_frac)
        self.free_region = free_region
        self.blend = blend
        self.margin = ALPHA_MARGIN_PX if blend == "alpha" else CLONE_MARGIN_PX

    def free_mask(self, frames: np.ndarray) -> np.ndarray:
        """Bool ``(H, W)``: where objects may go in all of ``frames`` (l, H, W, 3)."""
        masks = []
        for frame in frames:
            if callable(self.free_region):
                mask = np.asarray(self.free_region(frame), dtype=bool)
                if mask.shape != frame.shape[:2]:
                    raise ValueError(
                        f"free_region returned shape {mask.shape}; expected {frame.shape[:2]}"
                    )
            elif self.free_region == "anywhere":
                mask = np.ones(frame.shape[:2], bool)
            else:
                mask = table_mask(frame)
            masks.append(mask)
        return np.logical_and.reduce(masks)

    def _edit_frames(self, frames: np.ndarray, seed: int) -> tuple[np.ndarray, EditRecord]:
        rng = np.random.default_rng(seed)
        _, H, W, _ = frames.shape  # (l, H, W, 3)
        free = self.free_mask(frames)  # (H, W)
        busy = np.maximum.reduce([busyness(f) for f in frames])  # (H, W)
        occupied = np.zeros((H, W), bool)
        out = frames.copy()
        boxes, objects = [], []
        for _ in range(self.count):
            kind = self.kinds[int(rng.integers(len(self.kinds)))]
            color = self.colors[int(rng.integers(len(self.colors)))]
            width = rng.uniform(self.min_size_frac, self.max_size_frac) * min(H, W)
            if self.sprites is not None and self.sprites.get((kind, color)):
                choices = self.sprites[(kind, color)]
                sprite = choices[int(rng.integers(len(choices)))]
                rgb, alpha = sprite_object(sprite, width)  # (h, w, 3), (h, w)
            else:
                rgb, alpha = draw_object(kind, DISTRACTOR_COLORS[color], width)
            h, w = alpha.shape
            # The object plus a `gap` must lie on free pixels, apart from other objects; the
            # blend region (object + margin) must stay 1 px inside the image.
            m, gap = self.margin, max(1, round(0.02 * min(H, W)))
            border = max(1, m - gap + 1)
            px, py, how = choose_position(
                free, busy, occupied, h + 2 * gap, w + 2 * gap, rng, border=border
            )
            x, y = px + gap, py + gap  # the object's top-left
            for i in range(len(out)):
                out[i] = paste(out[i], rgb, alpha, x, y, self.blend, m)
            rows, cols = np.nonzero(alpha > 0.5)  # the box of the object's mask
            x0, y0 = x + int(cols.min()), y + int(rows.min())
            box = [x0, y0, x + int(cols.max()) + 1, y + int(rows.max()) + 1]
            occupied[py : py + h + 2 * gap, px : px + w + 2 * gap] = True
            boxes.append(box)
            width_px = round(float(width), 2)
            objects.append(
                {"kind": kind, "color": color, "width_px": width_px, "box": box, "placement": how}
            )
        params = {
            "objects": objects,
            "blend": self.blend,
            "style": self.style,
            "margin_px": self.margin,
            "free_region": self.free_region if isinstance(self.free_region, str) else "custom",
            "fallback": any(o["placement"] != "free" for o in objects),
        }
        return out, EditRecord(self.name, None, seed, boxes, len(boxes), params)


# ============================================================================ diffusion editors
def _import_diffusers():
    try:
        import diffusers
        import torch
    except ImportError as error:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "the diffusion editors need diffusers and transformers: pip install 'wm-gym[hf]'"
        ) from error
    return diffusers, torch


def check_pipeline_dir(path: str | Path) -> Path:
    """Check that ``path`` is a complete ``save_pretrained`` diffusers pipeline directory.

    Raises:
        FileNotFoundError: the directory does not exist (the message names it).
        CorruptFileError: no ``model_index.json`` or a component folder it lists is missing.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"diffusers pipeline directory {str(path)!r} does not exist. wm-gym never downloads "
            "weights: fetch them yourself (e.g. `huggingface-cli download "
            f"timbrooks/instruct-pix2pix --local-dir {path}`) or save one with save_pretrained"
        )
    index = path / "model_index.json"
    if not index.is_file():
        raise CorruptFileError(path, "no model_index.json: not a diffusers pipeline directory")
    try:
        components = json.loads(index.read_text())
    except json.JSONDecodeError as error:
        raise CorruptFileError(index, f"unreadable JSON ({error})") from None
    for key, value in components.items():
        spec_given = isinstance(value, list) and len(value) == 2 and value[0] is not None
        if not key.startswith("_") and spec_given and not (path / key).is_dir():
            raise CorruptFileError(path, f"incomplete pipeline: component folder {key!r} missing")
    return path


def _torch_dtype(torch, dtype):
    if dtype is None or not isinstance(dtype, str):
        return dtype
    return torch_dtype(dtype, ("fp32", "fp16", "bf16"))


class _DiffusionEditor(BaseEditor):
    """Loads a diffusers pipeline from a local directory; edits at its working size."""

    pipeline_class = ""

    def __init__(
        self,
        path: str | Path,
        prompt: str,
        num_inference_steps: int,
        guidance_scale: float,
        device: str,
        dtype: Any,
        working_size: int | None,
    ) -> None:
        self.path = check_pipeline_dir(path)
        diffusers, torch = _import_diffusers()
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1; got {num_inference_steps}")
        cls = getattr(diffusers, self.pipeline_class)
        try:
            pipe = cls.from_pretrained(
                str(self.path),
                local_files_only=True,
                safety_checker=None,
                requires_safety_checker=False,
                torch_dtype=_torch_dtype(torch, dtype),
            )
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise CorruptFileError(
                self.path, f"could not load a {self.pipeline_class} from it: {error}"
            ) from error
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe, self._torch = pipe, torch
        self.prompt = str(prompt)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.device = device
        native = pipe.unet.config.sample_size
        native = native[0] if isinstance(native, (list, tuple)) else native
        self.working_size = int(working_size or native * pipe.vae_scale_factor)

    def _working_hw(self, H: int, W: int) -> tuple[int, int]:
        """The pipeline's working size for an ``H x W`` image: shorter side = ``working_size``,
        both sides multiples of 8."""
        scale = self.working_size / min(H, W)
        return max(8, int(round(H * scale / 8)) * 8), max(8, int(round(W * scale / 8)) * 8)

    def _resize(self, image: np.ndarray, h: int, w: int) -> np.ndarray:
        shrink = h < image.shape[0]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        return cv2.resize(image, (w, h), interpolation=interpolation)

    def _generator(self, seed: int):
        return self._torch.Generator(device="cpu").manual_seed(int(seed))

    def _run(self, frame: np.ndarray, seed: int, **call) -> np.ndarray:
        """One pipeline call on uint8 ``(H, W, 3)``; returns uint8 ``(H, W, 3)``."""
        from PIL import Image

        H, W = frame.shape[:2]
        h, w = self._working_hw(H, W)
        image = Image.fromarray(self._resize(frame, h, w))
        with self._torch.inference_mode():
            result = self.pipe(
                prompt=self.prompt,
                image=image,
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                generator=self._generator(seed),
                output_type="np",
                **call,
            )
        out = np.clip(np.rint(np.asarray(result.images[0]) * 255.0), 0, 255).astype(np.uint8)
        return self._resize(out, H, W)

    def _params(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "working_size": self.working_size,
        }


def changed_boxes(
    before: np.ndarray, after: np.ndarray, threshold: float = 40.0, min_area_frac: float = 0.002
) -> list[list[int]]:
    """Boxes ``[x0, y0, x1, y1]`` of the largest connected regions where ``after`` differs from
    ``before`` (uint8 ``(H, W, 3)``) by more than ``threshold`` (max over channels)."""
    diff = np.abs(before.astype(np.int16) - after.astype(np.int16)).max(axis=-1)
    mask = cv2.morphologyEx((diff > threshold).astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2)))
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, 8)
    min_area = min_area_frac * diff.size
    regions = [s for s in stats[1:count] if s[cv2.CC_STAT_AREA] >= min_area]
    regions.sort(key=lambda s: -s[cv2.CC_STAT_AREA])
    return [[int(x), int(y), int(x + w), int(y + h)] for x, y, w, h, _ in regions[:MAX_DIFF_BOXES]]


class InstructPix2PixEditor(_DiffusionEditor):
    """Edits by instruction with a local ``StableDiffusionInstructPix2PixPipeline``.

    Args:
        path: local pipeline directory (e.g. a copy of ``timbrooks/instruct-pix2pix``); loaded
            with ``local_files_only=True`` and no safety checker.
        prompt: the edit instruction.
        num_inference_steps, image_guidance_scale, guidance_scale: as in diffusers.
        device, dtype: where to run (``"cpu"``, ``"cuda"``), ``None``/``"float16"``/...
        working_size: shorter side the image is resized to (multiple of 8; default the
            pipeline's native size, ``unet.sample_size * vae_scale_factor``).

    The whole image is regenerated, so the record's boxes are the regions that changed a lot
    (``changed_boxes``) in the last frame, and ``count`` is their number.
    """

    name = "instruct-pix2pix"
    pipeline_class = "StableDiffusionInstructPix2PixPipeline"

    def __init__(
        self,
        path: str | Path,
        prompt: str = "add a purple mug on the table",
        num_inference_steps: int = 10,
        image_guidance_scale: float = 1.5,
        guidance_scale: float = 7.0,
        device: str = "cpu",
        dtype: Any = None,
        working_size: int | None = None,
    ) -> None:
        super().__init__(
            path, prompt, num_inference_steps, guidance_scale, device, dtype, working_size
        )
        self.image_guidance_scale = float(image_guidance_scale)

    def _edit_frames(self, frames: np.ndarray, seed: int) -> tuple[np.ndarray, EditRecord]:
        out = np.stack(
            [self._run(f, seed, image_guidance_scale=self.image_guidance_scale) for f in frames]
        )
        boxes = changed_boxes(frames[-1], out[-1])
        params = self._params() | {"image_guidance_scale": self.image_guidance_scale}
        params["boxes_from"] = "difference"
        return out, EditRecord(self.name, self.prompt, seed, boxes, len(boxes), params)


class InpaintEditor(_DiffusionEditor):
    """Repaints a masked region with a local ``StableDiffusionInpaintPipeline``.

    Args:
        path, prompt, num_inference_steps, guidance_scale, device, dtype, working_size: as
            for :class:`InstructPix2PixEditor`.
        mask: ``"random_box"`` (a box the size of a distractor, placed on free table space like
            :class:`PasteDistractorEditor` places objects) or a callable
            ``(image (H, W, 3), rng) -> bool (H, W) mask | [x0, y0, x1, y1]``.
        min_size_frac, max_size_frac: the random box's side, as a fraction of the shorter side.
        keep_unmasked: paste the repainted region back into the original image (feathered by
            2 px), so that nothing outside the mask changes; else keep the whole output (which
            went through the VAE).
    """

    name = "inpaint"
    pipeline_class = "StableDiffusionInpaintPipeline"

    def __init__(
        self,
        path: str | Path,
        prompt: str = "a purple ball on the table",
        mask: str | Callable[[np.ndarray, np.random.Generator], Any] = "random_box",
        num_inference_steps: int = 10,
        guidance_scale: float = 7.5,
        device: str = "cpu",
        dtype: Any = None,
        working_size: int | None = None,
        min_size_frac: float = 0.12,
        max_size_frac: float = 0.2,
        keep_unmasked: bool = True,
    ) -> None:
        if not callable(mask) and mask != "random_box":
            raise UnknownNameError("inpaint mask", str(mask), ["random_box"])
        if not 0.0 < min_size_frac <= max_size_frac < 1.0:
            raise ValueError(
                f"need 0 < min_size_frac <= max_size_frac < 1; got {min_size_frac}, {max_size_frac}"
            )
        super().__init__(
            path, prompt, num_inference_steps, guidance_scale, device, dtype, working_size
        )
        self.mask = mask
        self.min_size_frac, self.max_size_frac = float(min_size_frac), float(max_size_frac)
        self.keep_unmasked = bool(keep_unmasked)

    def _mask(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Bool ``(H, W)`` mask of the region to repaint, the same for every frame."""
        _, H, W, _ = frames.shape
        if callable(self.mask):
            mask = self.mask(frames[-1], rng)
            if len(np.shape(mask)) == 1:  # a box
                x0, y0, x1, y1 = (int(v) for v in mask)
                mask = np.zeros((H, W), bool)
                mask[max(y0, 0) : y1, max(x0, 0) : x1] = True
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (H, W):
                raise ValueError(f"the mask callable returned shape {mask.shape}; need {(H, W)}")
            return mask
        side = int(round(rng.uniform(self.min_size_frac, self.max_size_frac) * min(H, W)))
        side = max(4, min(side, min(H, W) - 2))
        free = np.logical_and.reduce([table_mask(f) for f in frames])
        busy = np.maximum.reduce([busyness(f) for f in frames])
        x, y, _ = choose_position(free, busy, np.zeros((H, W), bool), side, side, rng)
        mask = np.zeros((H, W), bool)
        mask[y : y + side, x : x + side] = True
        return mask

    def _edit_frames(self, frames: np.ndarray, seed: int) -> tuple[np.ndarray, EditRecord]:
        from PIL import Image

        rng = np.random.default_rng(seed)
        mask = self._mask(frames, rng)  # (H, W) bool
        _, H, W, _ = frames.shape
        h, w = self._working_hw(H, W)
        mask_image = Image.fromarray(cv2.resize(mask.astype(np.uint8) * 255, (w, h)))
        out = []
        for frame in frames:
            generated = self._run(frame, seed, mask_image=mask_image, height=h, width=w)
            if self.keep_unmasked:
                grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
                weight = cv2.GaussianBlur(grown.astype(np.float32), (5, 5), 0) * grown
                weight = weight[..., None]  # (H, W, 1), zero outside the 1-px-grown mask
                generated = np.rint(weight * generated + (1 - weight) * frame).astype(np.uint8)
            out.append(generated)
        ys, xs = np.nonzero(mask)
        boxes = (
            [[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]]
            if ys.size
            else []
        )
        params = self._params() | {"mask": self.mask if isinstance(self.mask, str) else "custom"}
        params["keep_unmasked"] = self.keep_unmasked
        return np.stack(out), EditRecord(self.name, self.prompt, seed, boxes, len(boxes), params)


# ============================================================================ registry
EDITORS: dict[str, type] = {
    "paste": PasteDistractorEditor,
    "instruct-pix2pix": InstructPix2PixEditor,
    "inpaint": InpaintEditor,
}
DEFAULT_EDITOR = "paste"


def build_editor(name: str = DEFAULT_EDITOR, **options: Any) -> ImageEditor:
    """The editor registered under ``name`` built with ``options``.

    Raises:
        UnknownNameError: unknown editor name (with "did you mean").
        TypeError: an option the editor does not take (with "did you mean").
    """
    cls = lookup("editor", name, EDITORS)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for option in options:
        if option not in valid:
            raise TypeError(unknown_name_message(f"option of editor {name!r}", option, valid))
    return cls(**options)


if __name__ == "__main__":  # python -m wm_env.editing [OUT.npz]: render the sim sprite bank
    import sys

    print(render_sprite_bank(*sys.argv[1:2]))
