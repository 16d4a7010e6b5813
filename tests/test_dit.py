"""DiT transition model (wm_env/model/dit.py): shapes, causality, conditioning, KV cache, views, sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wm_env.errors import UnknownNameError
from wm_env.model.dit import (
    DIT_PRESETS,
    DiT,
    DiTConfig,
    TemporalKVCache,
    null_actions,
    single_query_attention,
    spatial_rope_split,
)

D, GRID, A = 4, (4, 4), 7


N = GRID[0] * GRID[1]


def tiny_config(**overrides) -> DiTConfig:
    kwargs = dict(
        in_channels=D,
        grid=GRID,
        patch_size=1,
        preset=None,
        hidden=32,
        depth=2,
        heads=2,
        max_frames=8,
        action_dropout=0.0,
    )
    kwargs.update(overrides)
    return DiTConfig(**kwargs)


def randomize_zero_init(model: DiT, seed: int = 0) -> DiT:
    """Give the zero-initialised adaLN/output weights random values so the model is not 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def make_model(seed: int = 0, **overrides) -> DiT:
    torch.manual_seed(seed)
    return randomize_zero_init(DiT(tiny_config(**overrides)), seed).eval()


def make_inputs(B=2, T=3, views=1, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, views * N, D, generator=gen)
    t = torch.rand(B, T, generator=gen)
    actions = torch.randn(B, T, A, generator=gen)
    return x, t, actions


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("patch_size", [1, 2])
@pytest.mark.parametrize("views", [1, 2])
def test_output_shape(patch_size, views):
    model = make_model(patch_size=patch_size, num_views=2)
    x, t, a = make_inputs(views=views)
    out = model(x, t, a)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


def test_fresh_model_is_zero_and_trainable():
    """Zero-init adaLN and head: output exactly 0 for any input, and only the head's weight
    gets a gradient on the first step; after one step the blocks' adaLN gets gradients too."""
    torch.manual_seed(0)
    model = DiT(tiny_config())
    x, t, a = make_inputs()
    out = model(x, t, a)
    assert torch.equal(out, torch.zeros_like(out))
    target = torch.randn_like(out)
    ((out - target) ** 2).mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert with_grad == {"final_layer.linear.weight", "final_layer.linear.bias"}
    with torch.no_grad():  # one plain SGD step
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
                p.grad = None
    out = model(x, t, a)
    assert out.abs().max() > 0
    ((out - target) ** 2).mean().backward()
    grad = model.layers[0].temporal.adaLN_modulation[-1].weight.grad
    assert grad is not None and grad.abs().max() > 0


def test_causal_over_frames():
    model = make_model()
    x, t, a = make_inputs(T=3)
    base = model(x, t, a)
    x2 = x.clone()
    x2[:, 2] += 1.0
    out = model(x2, t, a)
    torch.testing.assert_close(out[:, :2], base[:, :2], rtol=0, atol=0)
    assert (out[:, 2] - base[:, 2]).abs().max() > 1e-3
    x0 = x.clone()
    x0[:, 0] += 1.0
    out0 = model(x0, t, a)
    assert (out0[:, 2] - base[:, 2]).abs().max() > 1e-3  # the past reaches the future


def test_actions_and_times_condition_their_frame():
    model = make_model()
    x, t, a = make_inputs(T=3)
    base = model(x, t, a)
    a2 = a.clone()
    a2[:, 2] = -a2[:, 2]
    out = model(x, t, a2)
    torch.testing.assert_close(out[:, :2], base[:, :2], rtol=0, atol=0)
    assert (out[:, 2] - base[:, 2]).abs().max() > 1e-3
    t2 = t.clone()
    t2[:, 1] = 1.0 - t2[:, 1]
    out = model(x, t2, a)
    torch.testing.assert_close(out[:, 0], base[:, 0], rtol=0, atol=0)
    assert (out[:, 1] - base[:, 1]).abs().max() > 1e-3


def test_action_dropout_replaces_actions_by_null_in_training_only():
    model = make_model(action_dropout=1.0)
    x, t, a = make_inputs()
    null = null_actions(2, 3, A)
    assert null[..., :-1].eq(0).all() and null[..., -1].eq(1).all()
    expected = model(x, t, null)  # eval mode: no dropout
    assert (model(x, t, a) - expected).abs().max() > 1e-3
    model.train()
    torch.testing.assert_close(model(x, t, a), expected)


def test_relative_frame_positions():
    """RoPE over absolute frame positions: shifting every position changes nothing."""
    model = make_model()
    x, t, a = make_inputs(T=4)
    torch.testing.assert_close(model(x, t, a), model(x, t, a, frame_offset=1000), atol=2e-5, rtol=0)


def test_autocast_bf16_runs():
    model = make_model()
    x, t, a = make_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, a)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), model(x, t, a), atol=0.1, rtol=0.1)
    cache = model.new_cache()  # filled in fp32, read under autocast
    model.append_to_cache(cache, x[:, :2], t[:, :2], a[:, :2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        last = model(x[:, 2:], t[:, 2:], a[:, 2:], cache=cache)
    torch.testing.assert_close(last.float(), out[:, 2:].float(), atol=0.1, rtol=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_query_attention_matches_sdpa(dtype):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 2, n, 8, generator=gen).to(dtype) for n in (1, 5, 5))
    visible = torch.tensor([False, True, True, False, True])
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for mask in (None, visible):
        out = single_query_attention(q, k, v, mask)
        sdpa_mask = None if mask is None else mask[None]
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask)
        assert out.dtype == dtype and out.shape == (6, 2, 1, 8)
        torch.testing.assert_close(out, ref, **tol)
    # hidden keys carry no weight: changing them changes nothing
    v2 = v.clone()
    v2[:, :, ~visible] += 100.0
    torch.testing.assert_close(
        single_query_attention(q, k, v2, visible), single_query_attention(q, k, v, visible)
    )


def test_input_validation():
    model = make_model(num_views=2)
    x, t, a = make_inputs()
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(x, t[:, :2], a)
    with pytest.raises(ValueError, match="actions"):
        model(x, t, a[..., :3])
    with pytest.raises(ValueError, match="at most 2"):
        model(torch.randn(2, 3, 3 * N, D), t, a)
    with pytest.raises(ValueError, match="max_frames"):
        model(*make_inputs(T=9))


# ----------------------------------------------------------------------------- KV cache


def test_cache_matches_full_forward():
    """Frames appended to the cache (in chunks of 2 and 1) then a cached forward of the last
    frame give the same velocity as the full non-cached forward of the whole clip."""
    model = make_model(patch_size=2, grid=(4, 4), num_views=2)
    x, t, a = make_inputs(T=5, views=2)
    full = model(x, t, a)
    cache = TemporalKVCache(model.config.depth, window=None)
    model.append_to_cache(cache, x[:, :2], t[:, :2], a[:, :2])
    for i in (2, 3):
        model.append_to_cache(cache, x[:, i : i + 1], t[:, i : i + 1], a[:, i : i + 1])
    assert (cache.num_frames, cache.first_position, cache.next_position) == (4, 0, 4)
    last = model(x[:, 4:], t[:, 4:], a[:, 4:], cache=cache)
    torch.testing.assert_close(last, full[:, 4:], atol=1e-5, rtol=0)
    assert cache.next_position == 4  # forward reads the cache, never writes it
    # several new frames at once attend causally to each other after the cache
    cache2 = TemporalKVCache(model.config.depth, window=None)
    model.append_to_cache(cache2, x[:, :2], t[:, :2], a[:, :2])
    torch.testing.assert_close(
        model(x[:, 2:], t[:, 2:], a[:, 2:], cache=cache2), full[:, 2:], atol=1e-5, rtol=0
    )


def test_sliding_window_cache_matches_banded_attention():
    """After the window slides, the cache computes exactly a model whose temporal attention
    sees the `window` previous frames (a banded causal mask over the whole clip)."""
    model = make_model()
    x, t, a = make_inputs(T=7)
    cache = model.new_cache(window=2)
    for i in range(6):
        model.append_to_cache(cache, x[:, i : i + 1], t[:, i : i + 1], a[:, i : i + 1])
    assert (cache.num_frames, cache.first_position, cache.next_position) == (2, 4, 6)
    assert cache.keys[0].shape == (2 * N, 2, 2, 16)  # (B*S, H, window, d)
    last = model(x[:, 6:], t[:, 6:], a[:, 6:], cache=cache)
    banded = model(x, t, a, window=2)
    torch.testing.assert_close(last, banded[:, 6:], atol=1e-5, rtol=0)
    # a multi-frame append uses the same band inside the chunk
    cache = model.new_cache(window=2)
    model.append_to_cache(cache, x[:, :4], t[:, :4], a[:, :4])
    model.append_to_cache(cache, x[:, 4:6], t[:, 4:6], a[:, 4:6])
    torch.testing.assert_close(
        model(x[:, 6:], t[:, 6:], a[:, 6:], cache=cache), banded[:, 6:], atol=1e-5, rtol=0
    )


def test_sliding_window_cache_matches_window_forward_with_one_layer():
    """With one layer, cached keys depend on their own frame only, so the slid cache equals a
    plain forward over just the window's frames at their absolute positions. (Deeper models
    keep context older than the window in the cached keys of later layers: the banded test.)"""
    model = make_model(depth=1)
    x, t, a = make_inputs(T=7)
    cache = model.new_cache(window=3)
    for i in range(6):
        model.append_to_cache(cache, x[:, i : i + 1], t[:, i : i + 1], a[:, i : i + 1])
    last = model(x[:, 6:], t[:, 6:], a[:, 6:], cache=cache)
    window_only = model(x[:, 3:], t[:, 3:], a[:, 3:], frame_offset=3)
    torch.testing.assert_close(last, window_only[:, -1:], atol=1e-5, rtol=0)


def test_cache_clone_and_errors():
    model = make_model()
    x, t, a = make_inputs(T=3)
    cache = model.new_cache()
    assert cache.window == model.config.max_frames - 1
    model.append_to_cache(cache, x[:, :1], t[:, :1], a[:, :1])
    snap = cache.clone()
    model.append_to_cache(cache, x[:, 1:2], t[:, 1:2], a[:, 1:2])
    assert (snap.num_frames, cache.num_frames) == (1, 2)
    with pytest.raises(ValueError, match="in order"):
        model.append_to_cache(cache, x[:, 2:], t[:, 2:], a[:, 2:], frame_offset=5)
    with pytest.raises(ValueError, match="B\\*S"):
        model(x[:1, 2:], t[:1, 2:], a[:1, 2:], cache=cache)
    with pytest.raises(ValueError, match="window"):
        TemporalKVCache(2, window=0)
    with pytest.raises(ValueError, match="differs from the cache"):
        model(x[:, 2:], t[:, 2:], a[:, 2:], cache=cache, window=3)


# ----------------------------------------------------------------------------- views


def test_single_view_weights_load_into_multiview_model():
    single = make_model(num_views=1)
    multi = DiT(tiny_config(num_views=3)).eval()
    multi.load_state_dict(single.state_dict(), strict=True)
    x, t, a = make_inputs(views=1)
    torch.testing.assert_close(multi(x, t, a), single(x, t, a), rtol=0, atol=0)
    assert multi(torch.randn(2, 3, 3 * N, D), t, a).shape == (2, 3, 3 * N, D)


def test_views_are_told_apart():
    """Two views with identical content get different outputs: the view axis of the RoPE."""
    model = make_model(num_views=2)
    x, t, a = make_inputs(views=1)
    out = model(torch.cat([x, x], dim=2), t, a)
    assert (out[:, :, :N] - out[:, :, N:]).abs().max() > 1e-3


def test_spatial_rope_split():
    for head_dim in (8, 16, 32, 64, 72):
        view, rows, cols = spatial_rope_split(head_dim)
        assert view >= 1 and rows == cols >= 1 and view + rows + cols == head_dim // 2


# ----------------------------------------------------------------------------- config, sizes


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(grid=(5, 4), patch_size=2), r"grid \(5, 4\) is not divisible by patch_size 2"),
        (dict(hidden=30, heads=4), "hidden 30 is not divisible by heads 4"),
        (dict(hidden=8, heads=4), "head width"),
        (dict(action_dropout=1.5), "action_dropout"),
        (dict(grid=(4,)), "grid"),
        (dict(hidden=None), "needs explicit hidden"),
        (dict(num_views=0), "num_views"),
    ],
)
def test_config_errors_name_the_bad_value(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


def test_unknown_preset_suggests_a_name():
    with pytest.raises(UnknownNameError, match="did you mean 'tiny'"):
        DiTConfig(in_channels=96, grid=(16, 16), preset="tiyn")


def test_presets_and_sizes():
    assert DIT_PRESETS["S"] == (384, 12, 6) and DIT_PRESETS["XL"] == (1152, 28, 16)
    cfg = DiTConfig(in_channels=96, grid=(16, 16), preset="S", depth=2)
    assert (cfg.hidden, cfg.depth, cfg.heads) == (384, 2, 6)  # explicit overrides preset
    assert DiTConfig(**dataclasses.asdict(cfg)) == cfg  # round-trips through config.json
    tiny = DiT(DiTConfig(in_channels=96, grid=(16, 16), preset="tiny"))
    assert 1_000_000 < tiny.num_parameters() < 5_000_000
    with torch.device("meta"):
        small = DiT(DiTConfig(in_channels=96, grid=(16, 16), preset="S"))
    assert 20_000_000 < small.num_parameters() < 100_000_000


def test_flops_cache_computes_the_context_once_per_frame():
    model = DiT(DiTConfig(in_channels=96, grid=(16, 16), preset="tiny"))
    cached = [model.flops_per_frame(k, num_steps=10, cached=True) for k in (1, 8, 64)]
    full = [model.flops_per_frame(k, num_steps=10, cached=False) for k in (1, 8, 64)]
    assert all(c < f for c, f in zip(cached, full, strict=True))
    # the context is processed once instead of once per denoising step: for a long window
    # the saving approaches the number of steps
    assert 8 < full[2] / cached[2] < 10
    one_step_full = model.flops_per_frame(8, num_steps=1, cached=False)
    one_step_cached = model.flops_per_frame(8, num_steps=1, cached=True)
    assert one_step_cached == pytest.approx(one_step_full)  # one step: nothing to reuse
