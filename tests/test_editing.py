"""Tests of the start-frame editors (wm_env.editing).

The paste editor runs on synthetic table scenes (near-white table, task-colored cubes, a dark
band for the floor and robot) and, marked ``sim``, on a real frame of the ground-truth sim.
The diffusion editors run tiny random-weight pipelines built offline from configs, saved with
``save_pretrained`` and loaded back from that local directory.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from wm_env.editing import (
    EDITORS,
    SPRITE_BANK_PATH,
    EditRecord,
    ImageEditor,
    PasteDistractorEditor,
    build_editor,
    check_pipeline_dir,
    choose_position,
    draw_object,
    edit_frames,
    load_sprite_bank,
    render_sprite_bank,
    table_mask,
)
from wm_env.errors import CorruptFileError, UnknownNameError
from wm_env.sim.tasks import DISTRACTOR_COLORS, DISTRACTOR_KINDS, TASK_COLORS


# ---------------------------------------------------------------------- helpers
def table_scene(size: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 (size, size, 3): a near-white noisy table, a dark top band, three task cubes."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 246.0) + rng.normal(0.0, 1.0, (size, size, 3))
    image[: size // 5] = rng.uniform(20, 160, (size // 5, size, 3))  # floor and robot: busy
    cube = max(6, size // 7)
    for i, color in enumerate(("red", "green", "blue")):
        x, y = size // 4 + i * size // 4 - cube // 2, size // 2 + (i % 2) * size // 6
        image[y : y + cube, x : x + cube] = np.array(TASK_COLORS[color][:3]) * 255 * 0.8
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def near_boxes(shape: tuple[int, int], boxes: list[list[int]], pad: int) -> np.ndarray:
    """Bool (H, W): the union of the boxes, each grown by ``pad`` px."""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(y0 - pad, 0) : y1 + pad, max(x0 - pad, 0) : x1 + pad] = True
    return mask


def changed(before: np.ndarray, after: np.ndarray, threshold: int = 0) -> np.ndarray:
    return np.abs(before.astype(int) - after.astype(int)).max(axis=-1) > threshold


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def closest_to_intended(mean: np.ndarray, color: str, up_to_brightness: bool = False) -> bool:
    """Whether RGB ``mean`` (3,) in [0, 1] is closer to distractor ``color`` than to every task
    color. ``up_to_brightness`` compares with the best-scaled palette color: the sim's own
    renders shade a cyan capsule's body to half brightness, which plain RGB calls green."""

    def distance(rgba) -> float:
        c = np.array(rgba[:3])
        scale = max(float(mean @ c) / float(c @ c), 0.0) if up_to_brightness else 1.0
        return float(np.linalg.norm(mean - scale * c))

    intended = distance(DISTRACTOR_COLORS[color])
    return all(intended < distance(c) for c in TASK_COLORS.values())


# ---------------------------------------------------------------------- paste editor
@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("count", [1, 3])
def test_paste_changes_only_near_boxes(size, count):
    image = table_scene(size)
    original = image.copy()
    out, record = PasteDistractorEditor(count=count).edit(image, rng(1))
    np.testing.assert_array_equal(image, original)  # input untouched
    assert out.shape == image.shape and out.dtype == np.uint8
    assert record.editor == "paste" and record.count == count and len(record.boxes) == count
    for x0, y0, x1, y1 in record.boxes:
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        assert (x1 - x0) >= 3 and (y1 - y0) >= 3
    outside = ~near_boxes(image.shape[:2], record.boxes, record.params["margin_px"] + 1)
    assert not changed(image, out)[outside].any()
    for box in record.boxes:  # something was actually drawn in every box
        x0, y0, x1, y1 = box
        assert changed(image[y0:y1, x0:x1], out[y0:y1, x0:x1], 30).mean() > 0.3


def test_paste_puts_objects_on_free_table_without_overlap():
    image = table_scene(128)
    out, record = PasteDistractorEditor(count=4).edit(image, rng(3))
    table = table_mask(image)
    assert not record.params["fallback"]
    for obj in record.params["objects"]:
        x0, y0, x1, y1 = obj["box"]
        assert obj["placement"] == "free"
        assert table[y0:y1, x0:x1].all()  # the region was bare table before
    boxes = record.boxes
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            overlap = min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
            assert not overlap, (a, b)


@pytest.mark.parametrize("color", sorted(DISTRACTOR_COLORS))
@pytest.mark.parametrize(
    "blend, style", [("normal", "drawn"), ("alpha", "drawn"), ("normal", "sprites")]
)
def test_paste_colors_are_distractor_colors(color, blend, style):
    if style == "sprites" and not SPRITE_BANK_PATH.is_file():
        pytest.skip("no sprite bank shipped")
    image = table_scene(128)
    editor = PasteDistractorEditor(count=2, colors=(color,), blend=blend, style=style)
    out, record = editor.edit(image, rng(5))
    assert record.params["style"] == style
    assert {o["color"] for o in record.params["objects"]} == {color}
    for x0, y0, x1, y1 in record.boxes:
        mask = changed(image[y0:y1, x0:x1], out[y0:y1, x0:x1], 40)  # the object's pixels
        assert mask.sum() >= 9
        mean = out[y0:y1, x0:x1][mask].mean(axis=0) / 255.0
        # Drawn objects: plain RGB distance. Sim sprites: up to brightness (see the helper).
        assert closest_to_intended(mean, color, up_to_brightness=style == "sprites"), mean


def test_paste_is_deterministic_given_the_rng():
    image = table_scene(64)
    editor = PasteDistractorEditor(count=2)
    a, record_a = editor.edit(image, rng(7))
    b, record_b = editor.edit(image, rng(7))
    np.testing.assert_array_equal(a, b)
    assert record_a.to_dict() == record_b.to_dict()
    others = [editor.edit(image, rng(s))[0] for s in range(8, 11)]
    assert any(not np.array_equal(a, o) for o in others)
    replay, _ = editor.edit_with_seed(image, record_a.seed)  # the record's seed replays it
    np.testing.assert_array_equal(a, replay)


def test_edit_many_applies_one_edit_to_every_frame():
    base = table_scene(64)
    frames = np.stack([base.copy() for _ in range(3)])  # (3, 64, 64, 3)
    for i in range(3):  # the "robot" moves in the top band between frames
        frames[i, 2:8, 10 * i : 10 * i + 8] = 30
    original = frames.copy()
    editor = PasteDistractorEditor(count=2)
    edited, record = editor.edit_many(frames, rng(2))
    np.testing.assert_array_equal(frames, original)
    assert edited.shape == frames.shape and edited.dtype == np.uint8
    deltas = edited.astype(int) - frames.astype(int)
    for i in range(1, 3):
        np.testing.assert_array_equal(deltas[i], deltas[0])  # same objects at the same places
    assert record.count == 2
    # A protocol-only editor gets the same treatment through edit_frames.
    assert isinstance(editor, ImageEditor)
    again, _ = edit_frames(editor, frames, rng(2))
    np.testing.assert_array_equal(again, edited)


def test_paste_falls_back_to_least_busy_when_nothing_is_free():
    noise = rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # no table anywhere
    out, record = PasteDistractorEditor(count=2).edit(noise, rng(1))
    assert record.params["fallback"] is True
    assert [o["placement"] for o in record.params["objects"]] == ["least-busy"] * 2
    assert len(record.boxes) == 2
    for x0, y0, x1, y1 in record.boxes:
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64


@pytest.mark.parametrize("size", [64, 256])
def test_sprite_style_pastes_sim_crops(size):
    if not SPRITE_BANK_PATH.is_file():
        pytest.skip("no sprite bank shipped")
    bank = load_sprite_bank(SPRITE_BANK_PATH)
    assert set(bank) == {(k, c) for k in DISTRACTOR_KINDS for c in DISTRACTOR_COLORS}
    image = table_scene(size)
    editor = PasteDistractorEditor(count=3, style="sprites")
    out, record = editor.edit(image, rng(0))
    assert record.params["style"] == "sprites" and record.count == 3
    outside = ~near_boxes(image.shape[:2], record.boxes, record.params["margin_px"] + 1)
    assert not changed(image, out)[outside].any()
    np.testing.assert_array_equal(out, editor.edit(image, rng(0))[0])


def test_sprite_style_falls_back_to_drawn_without_the_bank(tmp_path):
    with pytest.warns(UserWarning, match="missing.npz"):
        editor = PasteDistractorEditor(style="sprites", sprite_path=tmp_path / "missing.npz")
    _, record = editor.edit(table_scene(64), rng(0))
    assert record.params["style"] == "drawn"
    with pytest.raises(UnknownNameError, match="did you mean 'sprites'"):
        PasteDistractorEditor(style="sprite")


def test_free_region_options():
    image = table_scene(64)
    anywhere = PasteDistractorEditor(free_region="anywhere").edit(image, rng(0))[1]
    assert anywhere.params["free_region"] == "anywhere"

    def left_half(img):
        mask = np.zeros(img.shape[:2], bool)
        mask[:, :32] = True
        return mask

    for seed in range(5):
        record = PasteDistractorEditor(free_region=left_half).edit(image, rng(seed))[1]
        assert record.params["free_region"] == "custom" and record.boxes[0][2] <= 32


def test_record_is_json_serialisable():
    _, record = PasteDistractorEditor(count=2).edit(table_scene(64), rng(0))
    data = json.loads(json.dumps(record.to_dict()))
    assert data["editor"] == "paste" and data["count"] == 2 and len(data["boxes"]) == 2
    assert EditRecord(**data).to_dict() == data


@pytest.mark.parametrize("kind", DISTRACTOR_KINDS)
def test_draw_object_shapes(kind):
    rgb, alpha = draw_object(kind, DISTRACTOR_COLORS["purple"], 12)
    assert rgb.shape == alpha.shape + (3,) and rgb.dtype == np.float32
    assert alpha.shape[1] == 12 and alpha.shape[0] >= 12  # standing objects are taller
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0 and alpha.max() == pytest.approx(1.0)
    assert alpha[alpha.shape[0] // 2, 6] == pytest.approx(1.0)  # solid in the middle
    assert alpha[0, 0] < 0.5  # round corners


def test_choose_position_keeps_patch_inside():
    free = np.ones((20, 20), bool)
    busy = np.zeros((20, 20))
    for seed in range(20):
        x, y, how = choose_position(free, busy, np.zeros_like(free), 6, 8, rng(seed), border=2)
        assert how == "free" and 2 <= x <= 20 - 8 - 2 and 2 <= y <= 20 - 6 - 2
    with pytest.raises(ValueError, match="does not fit"):
        choose_position(free, busy, np.zeros_like(free), 19, 4, rng(0))


def test_editor_argument_errors():
    with pytest.raises(ValueError, match="task color"):
        PasteDistractorEditor(colors=("red",))
    with pytest.raises(UnknownNameError, match="did you mean 'purple'"):
        PasteDistractorEditor(colors=("purpel",))
    with pytest.raises(UnknownNameError, match="did you mean 'ball'"):
        PasteDistractorEditor(kinds=("bal",))
    with pytest.raises(ValueError, match="size_frac"):
        PasteDistractorEditor(min_size_frac=0.3, max_size_frac=0.1)
    with pytest.raises(ValueError, match="uint8"):
        PasteDistractorEditor().edit(np.zeros((8, 8, 3), np.float32), rng())
    with pytest.raises(ValueError, match="uint8"):
        PasteDistractorEditor().edit_many(np.zeros((8, 8, 3), np.uint8), rng())


def test_registry_and_did_you_mean():
    assert set(EDITORS) == {"paste", "instruct-pix2pix", "inpaint"}
    editor = build_editor("paste", count=2)
    assert isinstance(editor, PasteDistractorEditor) and editor.count == 2
    assert isinstance(build_editor(), PasteDistractorEditor)  # paste is the default
    with pytest.raises(UnknownNameError, match="did you mean 'paste'"):
        build_editor("pastee")
    with pytest.raises(UnknownNameError, match="did you mean 'inpaint'"):
        build_editor("inpant")
    with pytest.raises(TypeError, match="did you mean 'count'"):
        build_editor("paste", cout=2)


def test_importing_editing_does_not_import_diffusers():
    import subprocess
    import sys

    code = (
        "import sys, wm_env.editing; "
        "print('diffusers' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------- diffusion editors
def test_missing_pipeline_path_names_the_path(tmp_path):
    missing = tmp_path / "no-such-pipeline"
    with pytest.raises(FileNotFoundError, match="no-such-pipeline"):
        build_editor("instruct-pix2pix", path=missing)
    with pytest.raises(FileNotFoundError, match="no-such-pipeline"):
        build_editor("inpaint", path=str(missing), prompt="a ball")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorruptFileError, match="empty.*model_index.json"):
        check_pipeline_dir(empty)
    (empty / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet"]}))
    with pytest.raises(CorruptFileError, match="component folder 'unet' missing"):
        check_pipeline_dir(empty)


def _tiny_pipeline(kind: str, root):
    """Build, save and return the directory of a tiny random-weight SD pipeline (no download)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz!?.,'":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(
        str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=16
    )
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = diffusers.UNet2DConditionModel(
        sample_size=16,  # working size 16 * vae_scale_factor 2 = 32 px
        in_channels=8 if kind == "pix2pix" else 9,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=32,
    )
    if kind == "pix2pix":
        cls, scheduler = (
            diffusers.StableDiffusionInstructPix2PixPipeline,
            diffusers.EulerAncestralDiscreteScheduler(),
        )
    else:
        cls, scheduler = (
            diffusers.StableDiffusionInpaintPipeline,
            diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        )
    pipe = cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = root / kind
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pix2pix_path(tmp_path_factory):
    return _tiny_pipeline("pix2pix", tmp_path_factory.mktemp("pix2pix"))


@pytest.fixture(scope="module")
def inpaint_path(tmp_path_factory):
    return _tiny_pipeline("inpaint", tmp_path_factory.mktemp("inpaint"))


def test_instruct_pix2pix_editor(pix2pix_path):
    editor = build_editor("instruct-pix2pix", path=pix2pix_path, num_inference_steps=2)
    assert editor.working_size == 32
    image = table_scene(64)
    original = image.copy()
    out, record = editor.edit(image, rng(0))
    np.testing.assert_array_equal(image, original)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert record.editor == "instruct-pix2pix" and record.prompt == "add a purple mug on the table"
    assert record.params["path"] == str(pix2pix_path) and record.count == len(record.boxes)
    json.dumps(record.to_dict())
    again, _ = editor.edit(image, rng(0))
    np.testing.assert_array_equal(out, again)
    other, _ = editor.edit(image, rng(1))
    assert not np.array_equal(out, other)
    # one seed for every history frame: identical frames stay identical
    frames, many = editor.edit_many(np.stack([image, image]), rng(0))
    assert frames.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(frames[0], frames[1])
    np.testing.assert_array_equal(frames[1], out)
    assert many.seed == record.seed


def test_inpaint_editor_changes_only_the_mask(inpaint_path):
    editor = build_editor(
        "inpaint", path=inpaint_path, prompt="a purple ball on the table", num_inference_steps=2
    )
    image = table_scene(64)
    original = image.copy()
    out, record = editor.edit(image, rng(0))
    np.testing.assert_array_equal(image, original)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert record.editor == "inpaint" and record.count == 1 and len(record.boxes) == 1
    x0, y0, x1, y1 = record.boxes[0]
    assert table_mask(image)[y0:y1, x0:x1].all()  # the random box is on free table
    assert not changed(image, out)[~near_boxes((64, 64), record.boxes, 2)].any()
    assert changed(image, out)[y0:y1, x0:x1].any()
    np.testing.assert_array_equal(out, editor.edit(image, rng(0))[0])
    assert not np.array_equal(out, editor.edit(image, rng(1))[0])


def test_inpaint_editor_takes_a_mask_callable(inpaint_path):
    editor = build_editor(
        "inpaint",
        path=inpaint_path,
        prompt="a ball",
        mask=lambda image, rng: [8, 40, 24, 56],
        num_inference_steps=1,
    )
    out, record = editor.edit(table_scene(64), rng(0))
    assert record.boxes == [[8, 40, 24, 56]] and record.params["mask"] == "custom"
    with pytest.raises(UnknownNameError, match="random_box"):
        build_editor("inpaint", path=inpaint_path, mask="random_boxx")


# ---------------------------------------------------------------------- real sim frame
@pytest.mark.sim
def test_paste_on_a_real_sim_frame(sim_env_factory):
    env = sim_env_factory("lift")
    obs, _ = env.reset(seed=0)
    image = obs["image"]  # (64, 64, 3)
    out, record = PasteDistractorEditor(count=2).edit(image, rng(0))
    assert not record.params["fallback"]
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    for x0, y0, x1, y1 in record.boxes:
        region = image[y0:y1, x0:x1].astype(float)
        assert region.mean() > 200  # bright: the near-white table
        assert hsv[y0:y1, x0:x1, 1].mean() < 40  # low saturation
    outside = ~near_boxes(image.shape[:2], record.boxes, record.params["margin_px"] + 1)
    assert not changed(image, out)[outside].any()


@pytest.mark.sim
def test_render_sprite_bank(sim_available, tmp_path):
    path = render_sprite_bank(tmp_path / "bank.npz", resolution=64, positions=((0.0, 0.0),))
    bank = load_sprite_bank(path)
    assert len(bank) == len(DISTRACTOR_KINDS) * len(DISTRACTOR_COLORS)
    for (kind, color), sprites in bank.items():
        (rgba,) = sprites
        assert rgba.dtype == np.uint8 and rgba.shape[-1] == 4 and min(rgba.shape[:2]) >= 3
        alpha = rgba[..., 3] > 0
        mean = rgba[..., :3][alpha].mean(axis=0) / 255.0
        assert closest_to_intended(mean, color, up_to_brightness=True), (kind, color, mean)
