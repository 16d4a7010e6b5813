"""Frames people look at (wm_env.viz): captions, verdict marks, grids, GIFs."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from wm_env.viz import caption, grid, save_gif, upscale


def video(length: int, height: int = 16, width: int = 20, seed: int = 0) -> np.ndarray:
    """uint8 (length, height, width, 3) random frames, each distinct."""
    return np.random.default_rng(seed).integers(0, 256, (length, height, width, 3), dtype=np.uint8)


def grey(length: int = 3, height: int = 64, width: int = 64) -> np.ndarray:
    return np.full((length, height, width, 3), 128, dtype=np.uint8)


def test_grid_tiles_videos_and_holds_the_last_frame_of_short_ones():
    """Tiles sit row-major with padding; a shorter video repeats its last frame; empty cells
    and padding stay white."""
    short, long, third = video(3, seed=1), video(5, seed=2), video(4, seed=3)
    out = grid([short, long, third], columns=2, pad=2)
    h, w = 16, 20
    assert out.shape == (5, 2 * (h + 2), 2 * (w + 2), 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:3, :h, :w], short)
    np.testing.assert_array_equal(out[3:, :h, :w], np.repeat(short[-1:], 2, axis=0))
    np.testing.assert_array_equal(out[:, :h, w + 2 : 2 * w + 2], long)
    np.testing.assert_array_equal(out[:4, h + 2 : 2 * h + 2, :w], third)
    np.testing.assert_array_equal(out[4, h + 2 : 2 * h + 2, :w], third[-1])
    assert np.all(out[:, h + 2 :, w + 2 :] == 255)  # the empty fourth cell
    assert np.all(out[:, h : h + 2] == 255)  # padding between rows


def test_grid_rejects_mismatched_sizes_and_no_videos():
    """Videos of different frame sizes, or none at all, raise ValueError."""
    with pytest.raises(ValueError, match="frame size"):
        grid([video(3), video(3, height=18)], columns=2)
    with pytest.raises(ValueError, match="at least one"):
        grid([], columns=2)


def test_caption_adds_a_text_bar_of_the_given_height():
    """The bar (white, with dark text) is added below every frame; frames are untouched when
    no verdict is given."""
    frames = grey()
    out = caption(frames, "lift the red cube", height=40)
    assert out.shape == (3, 64 + 40, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :64], frames)
    bar = out[:, 64:]
    assert np.all(bar == bar[:1])  # the same bar under every frame
    assert (bar[0] < 100).any(axis=-1).sum() > 20  # text was drawn
    assert np.median(bar) == 255
    assert caption(frames, "x").shape == (3, 64 + 28, 64, 3)  # default height


def test_caption_marks_the_last_frame_with_the_verdict():
    """success=True draws a green mark, False a red one, only on the last frame."""
    frames = grey()
    marked = {v: caption(frames, "push the blue cube", success=v)[:, :64] for v in (True, False)}
    for verdict, out in marked.items():
        np.testing.assert_array_equal(out[:-1], frames[:-1])
        changed = (out[-1] != frames[-1]).any(axis=-1)
        assert changed.sum() > 20, verdict
        r, g = out[-1][changed][:, 0].astype(int), out[-1][changed][:, 1].astype(int)
        if verdict:
            assert np.all(g > r)
        else:
            assert np.all(r > g)
    assert not np.array_equal(marked[True][-1], marked[False][-1])
    np.testing.assert_array_equal(frames, grey())  # the input is not modified


def test_upscale_and_save_gif(tmp_path):
    """upscale repeats pixels by the factor; save_gif writes frames that read back unchanged in
    size and count."""
    frames = video(4, height=8, width=8)
    big = upscale(frames, 3)
    assert big.shape == (4, 24, 24, 3)
    np.testing.assert_array_equal(big[:, ::3, ::3], frames)
    np.testing.assert_array_equal(big[:, 2::3, 1::3], frames)
    assert upscale(frames, 1) is frames
    path = save_gif(tmp_path / "sub" / "clip.gif", big, fps=5)
    back = iio.imread(path)
    assert back.shape[:3] == (4, 24, 24)


def test_fidelity_strip_shows_the_chosen_steps_of_the_first_rows(tmp_path):
    from benchmarks.fidelity_strip import fidelity_strip, main

    frames = np.zeros((5, 40, 6, 3), np.uint8)  # 5 steps, a grid of 4 rows of 10 px
    for t in range(5):
        frames[t, :, :, 0] = 50 * t  # the step, readable in red
    frames[:, 10:20, :, 1] = 200  # row 1 marked in green
    gif = tmp_path / "grid.gif"
    iio.imwrite(gif, frames, loop=0)
    strip = fidelity_strip(gif, [1, 3, 5], episodes=2, rows_in_grid=4)
    assert strip.shape == (20, 18, 3)
    assert [int(strip[0, 6 * i, 0]) for i in range(3)] == [0, 100, 200]
    assert strip[15, 0, 1] == 200 and strip[5, 0, 1] == 0
    with pytest.raises(ValueError, match="cannot show steps"):
        fidelity_strip(gif, [6], episodes=1, rows_in_grid=4)
    main([str(gif), str(tmp_path / "strip.png"), "--steps", "1", "2"])
    assert iio.imread(tmp_path / "strip.png").shape == (20, 12, 3)
