"""The world-model runtime (wm_env/world_model.py) on a tiny bundle trained on moving-blob data.

The bundle (``tiny_bundle`` in conftest.py) is a 4x4x4-latent VAE and a one-layer DiT trained for
a few hundred steps on 32x32 frames where a blob moves by ``4 * (dx, dy)`` pixels per step.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from wm_env.bundle import read_config
from wm_env.errors import CorruptFileError
from wm_env.world_model import WorldModel, condition_dim, normalize_actions

SIZE = 32
TOKENS, CHANNELS = 16, 4  # 4x4 latent grid, 4 channels


@pytest.fixture(scope="module")
def wm(tiny_bundle):
    return WorldModel.from_pretrained(tiny_bundle)


@pytest.fixture(scope="module")
def starts(blob_render):
    """uint8 (3, 32, 32, 3): blobs at three places."""
    return np.stack([blob_render(p) for p in ((12.0, 14.0), (20.0, 18.0), (16.0, 10.0))])


def actions_for(t: int, batch: int = 3) -> np.ndarray:
    """A fixed, varied action sequence: (batch, 7) at step t."""
    rng = np.random.default_rng(100 + t)
    a = np.zeros((batch, 7), np.float32)
    a[:, :2] = rng.uniform(-1, 1, (batch, 2))
    return a


def rollout(model: WorldModel, starts, steps: int = 3, seed=0, first_step: int = 0):
    """Frames (B, steps, H, W, 3) and the final latents (B, L, D)."""
    model.reset(starts, seed=seed)
    return continue_rollout(model, steps, first_step)


def continue_rollout(model: WorldModel, steps: int, first_step: int = 0):
    batch = model.batch_size
    frames = [model.step(actions_for(first_step + t, batch)) for t in range(steps)]
    return np.stack(frames, axis=1), model.latest_latents.clone()


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


# ---------------------------------------------------------------------- basics


def test_shapes_and_dtypes(wm, starts):
    assert wm.history == 2 and wm.frame_skip == 1 and wm.target == "delta"
    assert wm.latent_shape == (TOKENS, CHANNELS)
    assert wm.image_size == (SIZE, SIZE)
    assert wm.fps == 10.0  # the dataset's rate (frame_skip 1)
    first = wm.reset(starts, seed=0)
    assert first.dtype == np.uint8 and first.shape == (3, SIZE, SIZE, 3)
    assert wm.batch_size == 3
    frame = wm.step(actions_for(0))
    assert frame.dtype == np.uint8 and frame.shape == (3, SIZE, SIZE, 3)
    assert wm.latest_latents.shape == (3, TOKENS, CHANNELS)
    assert torch.isfinite(wm.latest_latents).all()
    assert wm.last_step_seconds > 0
    # (B, frame_skip, 7) actions are accepted too
    assert wm.step(actions_for(1)[:, None]).shape == (3, SIZE, SIZE, 3)


def test_encode_decode_round_trip(wm, starts):
    latents = wm.encode(starts)
    assert latents.shape == (3, TOKENS, CHANNELS) and latents.dtype == torch.float32
    decoded = wm.decode(latents)
    assert decoded.dtype == np.uint8 and decoded.shape == starts.shape
    # the tiny VAE is blurry but reconstructs the blob
    assert np.abs(decoded.astype(int) - starts.astype(int)).mean() < 12
    # with residual decoding (the default) reset shows the start frame itself ...
    assert wm.residual_decoding
    assert max_abs_diff(wm.reset(starts, seed=0), starts) <= 1
    # ... and plainly decoded, the start frame as the model sees it
    plain = WorldModel.from_pretrained(wm.bundle, residual_decoding=False)
    assert np.array_equal(plain.reset(starts, seed=0), decoded)


def test_residual_decoding_adds_the_predicted_change_to_the_start_frame(tiny_bundle, starts):
    residual = WorldModel.from_pretrained(tiny_bundle)
    plain = WorldModel.from_pretrained(tiny_bundle, residual_decoding=False)
    shown, latents = rollout(residual, starts, steps=3, seed=5)
    decoded, plain_latents = rollout(plain, starts, steps=3, seed=5)
    assert torch.equal(latents, plain_latents)  # the dynamics are the same
    start_error = starts.astype(int) - plain.decode(plain.encode(starts)).astype(int)
    expected = np.clip(decoded.astype(int) + start_error[:, None], 0, 255)
    assert np.abs(shown.astype(int) - expected).max() <= 2  # rounding twice
    assert not np.array_equal(shown, decoded)
    # starts of another size are resized for the residual as the encoder resizes them
    big = np.repeat(np.repeat(starts, 2, axis=1), 2, axis=2)  # (3, 64, 64, 3)
    assert residual.reset(big, seed=0).shape == starts.shape


def test_chunked_decoding_equals_one_call(wm, starts, monkeypatch):
    latents = wm.encode(starts)  # 3 frames
    monkeypatch.setattr(wm, "decode_chunk", None)
    whole = wm.decode(latents)
    monkeypatch.setattr(wm, "decode_chunk", 2)  # chunks of 2 + 1
    assert np.abs(wm.decode(latents).astype(int) - whole.astype(int)).max() <= 1


def test_short_and_long_histories(wm, starts, blob_render):
    single, _ = rollout(wm, starts, steps=2, seed=3)
    one_frame, _ = rollout(wm, starts[:, None], steps=2, seed=3)  # (B, 1, H, W, 3)
    assert np.array_equal(single, one_frame)  # one frame = that frame repeated
    older = np.stack([blob_render((5.0, 5.0))] * 3)
    repeated = np.stack([older, older, starts, starts], axis=1)  # (B, 4, H, W, 3)
    long, _ = rollout(wm, repeated, steps=2, seed=3)
    assert np.array_equal(single, long)  # only the last `history` = 2 frames matter
    mixed = np.stack([older, starts], axis=1)
    other, _ = rollout(wm, mixed, steps=2, seed=3)
    assert not np.array_equal(single, other)  # ... and they do matter


# ---------------------------------------------------------------------- sampling


def test_same_seed_same_rollout(wm, starts):
    a, la = rollout(wm, starts, steps=4, seed=11)
    b, lb = rollout(wm, starts, steps=4, seed=11)
    assert np.array_equal(a, b)
    assert torch.equal(la, lb)


def test_different_seeds_differ(wm, starts):
    a, la = rollout(wm, starts, steps=3, seed=1)
    b, lb = rollout(wm, starts, steps=3, seed=2)
    assert not torch.allclose(la, lb, atol=1e-3)
    # the blob world is deterministic, so with the mean head the noise only moves the residual
    assert not np.array_equal(a, b)
    # no seed: fresh random seeds each reset
    c, lc = rollout(wm, starts, steps=2, seed=None)
    d, ld = rollout(wm, starts, steps=2, seed=None)
    assert not torch.allclose(lc, ld, atol=1e-3)


def test_temperature_zero_is_deterministic(tiny_bundle, starts):
    cold = WorldModel.from_pretrained(tiny_bundle, temperature=0.0)
    a, la = rollout(cold, starts, steps=3, seed=1)
    b, lb = rollout(cold, starts, steps=3, seed=2)
    assert torch.equal(la, lb) and np.array_equal(a, b)
    with pytest.raises(ValueError, match="temperature"):
        WorldModel.from_pretrained(tiny_bundle, temperature=-1.0)


def test_cache_and_no_cache_agree(tiny_bundle, wm, starts):
    """The KV cache is an optimisation only: same frames for the same seed, past the window."""
    uncached = WorldModel.from_pretrained(tiny_bundle, use_cache=False)
    a, la = rollout(wm, starts, steps=5, seed=4)  # 5 > history: the window slides
    b, lb = rollout(uncached, starts, steps=5, seed=4)
    assert torch.allclose(la, lb, atol=1e-4)
    assert max_abs_diff(a, b) <= 1  # identical up to a rounding flip


def deep_model(wm: WorldModel, depth: int, use_cache: bool) -> WorldModel:
    """``wm`` with a random-weight DiT of ``depth`` layers (same seed, so both calls agree)."""
    import copy

    from wm_env.model.dit import DiT, DiTConfig

    config = copy.deepcopy(wm.config)
    config["dynamics"]["dit"]["depth"] = depth
    torch.manual_seed(7)
    dit = DiT(DiTConfig(**config["dynamics"]["dit"])).eval().requires_grad_(False)
    for parameter in dit.parameters():  # DiT zero-initialises its adaLN: every block would be
        parameter.normal_(0.0, 0.2)  # the identity, and frames would not talk to each other
    return WorldModel(
        wm.bundle, config, wm.encoder, wm.adapter, wm.pixel_decoder, dit, wm.scheduler,
        wm.device, num_steps=wm.num_steps, use_cache=use_cache, temperature=wm.temperature,
    )  # fmt: skip


def test_cached_rollout_of_a_multi_layer_model_computes_what_training_trained(wm, starts):
    """With several layers the context of every step is the last ``history`` frames alone, as
    in the training clips: the cache must not carry older frames in through deeper layers
    (a sliding cache does: layer l of frame t would have seen frames back to t - l * history)."""
    cached, recomputed = deep_model(wm, 4, True), deep_model(wm, 4, False)
    a, la = rollout(cached, starts, steps=6, seed=4)  # 6 steps: well past the 2-frame window
    b, lb = rollout(recomputed, starts, steps=6, seed=4)
    assert torch.allclose(la, lb, atol=1e-4), float((la - lb).abs().max())
    assert max_abs_diff(a, b) <= 1


def test_bf16_autocasts_sampling_encoding_and_decoding(tiny_bundle, wm, starts):
    """bf16 runs every forward pass in bfloat16 yet returns float32 latents and close frames."""
    low = WorldModel.from_pretrained(tiny_bundle, dtype="bf16")
    latents, low_latents = wm.encode(starts), low.encode(starts)
    assert low_latents.dtype == torch.float32
    assert not torch.equal(latents, low_latents)  # the encoder did run in bf16 ...
    assert torch.allclose(latents, low_latents, atol=0.1)  # ... close to float32
    decoded, low_decoded = wm.decode(latents), low.decode(latents)
    assert 0 < np.abs(decoded.astype(int) - low_decoded.astype(int)).mean() < 3
    a, la = rollout(wm, starts, steps=3, seed=4)
    b, lb = rollout(low, starts, steps=3, seed=4)
    assert lb.dtype == torch.float32 and torch.allclose(la, lb, atol=0.25)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 4
    with pytest.raises(KeyError, match="did you mean 'bf16'"):
        WorldModel.from_pretrained(tiny_bundle, dtype="bf61")


def test_bf16_stores_matmul_weights_in_bf16_and_computes_what_autocast_does(
    tiny_bundle, wm, starts
):
    """Weights stored in bf16 give exactly the frames of fp32 weights under bf16 autocast."""
    low = WorldModel.from_pretrained(tiny_bundle, dtype="bf16")
    linears = [m for m in low.dit.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    convs = [m for m in low.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    norms = [m for m in low.encoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert all(m.weight.dtype == torch.float32 for m in norms)  # autocast runs norms in fp32
    autocast_only = WorldModel(
        wm.bundle, wm.config, wm.encoder, wm.adapter, wm.pixel_decoder, wm.dit, wm.scheduler,
        wm.device, num_steps=wm.num_steps, dtype=torch.bfloat16, temperature=wm.temperature,
    )  # fmt: skip
    a, la = rollout(low, starts, steps=3, seed=4)
    b, lb = rollout(autocast_only, starts, steps=3, seed=4)
    assert torch.equal(la, lb) and max_abs_diff(a, b) == 0


@pytest.mark.parametrize("use_cache", [True, False])
def test_snapshot_restore_replays_exactly(tiny_bundle, starts, use_cache):
    model = WorldModel.from_pretrained(tiny_bundle, use_cache=use_cache)
    model.reset(starts, seed=5)
    continue_rollout(model, 2)
    snap = model.snapshot()
    after, latents = continue_rollout(model, 3, first_step=2)
    model.restore(snap)
    again, latents_again = continue_rollout(model, 3, first_step=2)
    assert np.array_equal(after, again) and torch.equal(latents, latents_again)
    # branch off with other actions, then come back: the snapshot is still intact
    model.restore(snap)
    continue_rollout(model, 3, first_step=50)
    model.restore(snap)
    third, _ = continue_rollout(model, 3, first_step=2)
    assert np.array_equal(after, third)
    assert snap.steps == 2 and model._state.steps == 5


def test_restore_into_a_fresh_instance(tiny_bundle, wm, starts):
    wm.reset(starts, seed=6)
    continue_rollout(wm, 2)
    snap = wm.snapshot()
    expected, _ = continue_rollout(wm, 2, first_step=2)
    other = WorldModel.from_pretrained(tiny_bundle)  # never reset
    other.restore(snap)
    got, _ = continue_rollout(other, 2, first_step=2)
    assert np.array_equal(expected, got)


def test_batched_rollout_equals_single_rollouts(wm, starts):
    """Episode i of a batch seeded s draws its noise from seed s + i, independently of the
    others: it matches a one-episode rollout seeded s + i (up to batched float arithmetic)."""
    frames, latents = rollout(wm, starts, steps=3, seed=20)
    for i in range(len(starts)):
        wm.reset(starts[i : i + 1], seed=20 + i)
        single = np.stack([wm.step(actions_for(t)[i : i + 1]) for t in range(3)], axis=1)
        assert torch.allclose(wm.latest_latents[0], latents[i], atol=1e-4)
        assert max_abs_diff(single[0], frames[i]) <= 1
    # explicit per-episode seeds are the same thing
    explicit, explicit_latents = rollout(wm, starts, steps=3, seed=[20, 21, 22])
    assert np.array_equal(frames, explicit) and torch.equal(latents, explicit_latents)
    with pytest.raises(ValueError, match="seeds"):
        wm.reset(starts, seed=[1, 2])


def test_episodes_do_not_affect_each_other(wm, starts, blob_render):
    a, la = rollout(wm, starts, steps=3, seed=30)
    changed = starts.copy()
    changed[1:] = blob_render((25.0, 25.0))
    wm.reset(changed, seed=30)
    frames = []
    for t in range(3):
        action = actions_for(t)
        action[1:, :2] = -action[1:, :2]  # other actions for episodes 1 and 2
        frames.append(wm.step(action))
    b = np.stack(frames, axis=1)
    assert torch.allclose(la[0], wm.latest_latents[0], atol=1e-5)
    assert max_abs_diff(a[0], b[0]) <= 1
    assert not np.array_equal(a[1], b[1])


def test_reset_subset_restarts_only_those_episodes(wm, starts):
    wm.reset(starts, seed=40)
    continue_rollout(wm, 2)
    before = wm.snapshot()
    untouched, untouched_latents = continue_rollout(wm, 2, first_step=2)

    wm.restore(before)
    wm.reset_subset([1], starts[1:2], seed=[77])
    frames, latents = continue_rollout(wm, 2, first_step=2)
    # episodes 0 and 2 continue exactly as if nothing happened
    for i in (0, 2):
        assert torch.allclose(latents[i], untouched_latents[i], atol=1e-5)
        assert max_abs_diff(frames[i], untouched[i]) <= 1
    # episode 1 starts over: like a fresh rollout from its start frame seeded 77
    wm.reset(starts[1:2], seed=77)
    fresh = np.stack([wm.step(actions_for(2 + t)[1:2]) for t in range(2)], axis=1)
    assert torch.allclose(wm.latest_latents[0], latents[1], atol=1e-3)
    assert max_abs_diff(fresh[0], frames[1]) <= 2
    with pytest.raises(ValueError, match="indices"):
        wm.reset_subset([0, 1], starts[:1])


# ---------------------------------------------------------------------- actions


def test_normalize_actions_and_condition_dim():
    stats = {"q01": [-2.0] * 6 + [0.0], "q99": [2.0] * 6 + [1.0]}
    actions = torch.tensor([[[-2.0, 0.0, 2.0, 1.0, -1.0, 0.0, 0.3]]])  # (1, skip 1, 7)
    cond = normalize_actions(actions, stats)
    assert cond.shape == (1, condition_dim(1)) == (1, 8)
    assert torch.allclose(cond[0, :6], torch.tensor([-1.0, 0.0, 1.0, 0.5, -0.5, 0.0]))
    assert cond[0, 6] == pytest.approx(0.3)  # the gripper is kept as is
    assert cond[0, 7] == 0.0  # real action, not the null one
    stacked = normalize_actions(torch.zeros(4, 3, 7), stats, frame_skip=3)
    assert stacked.shape == (4, condition_dim(3)) == (4, 22)
    # a dim that never varied in the data (q01 == q99) maps to 0 whatever the action
    constant = {"q01": [-1.0] * 2 + [0.0] * 5, "q99": [1.0] * 2 + [0.0] * 5}
    cond = normalize_actions(torch.tensor([[[0.5, -0.5, 0.7, -1.0, 0.0, 0.2, 1.0]]]), constant)
    assert torch.allclose(cond[0, :6], torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0, 0.0]))


def test_actions_change_the_prediction(wm, blob_render):
    """Trained on the moving blob, the model moves it the way the actions say.

    Same starts and seeds, dx = +1 vs dx = -1 for 3 steps (the data moves 4 px per step):
    the frames differ and the blob's centre of mass ends further right under +dx.
    """
    starts = np.stack([blob_render((x, y)) for x, y in ((16, 16), (12, 18), (20, 13), (15, 20))])

    def centre_x(frames: np.ndarray) -> np.ndarray:
        weight = np.clip(frames[..., 0].astype(float) - 30, 0, None)  # red above background
        return (weight * np.arange(SIZE)).sum((-2, -1)) / weight.sum((-2, -1))

    shifts, differences = [], []
    for seed in (0, 100):
        ends = {}
        for dx in (1.0, -1.0):
            wm.reset(starts, seed=seed)
            action = np.zeros((len(starts), 7), np.float32)
            action[:, 0] = dx
            for _ in range(3):
                frame = wm.step(action)
            ends[dx] = frame
        differences.append(np.abs(ends[1.0].astype(int) - ends[-1.0].astype(int)).mean())
        shifts.append(centre_x(ends[1.0]) - centre_x(ends[-1.0]))
    assert min(differences) > 2.0  # grey levels, mean over all pixels
    shifts = np.concatenate(shifts)
    assert shifts.mean() > 1.0  # pixels (the data says 24 px; the tiny model learns a part)
    assert (shifts > 0).mean() >= 0.75


# ---------------------------------------------------------------------- bad inputs


def test_step_before_reset(tiny_bundle):
    model = WorldModel.from_pretrained(tiny_bundle)
    assert model.batch_size is None
    with pytest.raises(RuntimeError, match="reset"):
        model.step(np.zeros((1, 7), np.float32))
    with pytest.raises(RuntimeError, match="reset"):
        model.snapshot()


def test_bad_actions(wm, starts):
    wm.reset(starts, seed=0)
    for bad in (np.zeros((3, 6)), np.zeros((2, 7)), np.zeros(7), np.zeros((3, 2, 7))):
        with pytest.raises(ValueError, match=r"actions must be \(3, 7\)"):
            wm.step(bad)
    nan = np.zeros((3, 7), np.float32)
    nan[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        wm.step(nan)
    inf = np.zeros((3, 7), np.float32)
    inf[0, 2] = np.inf
    with pytest.raises(ValueError, match="inf"):
        wm.step(inf)
    assert wm._state.steps == 0  # rejected actions do not advance the episodes


def test_bad_frames(wm, starts):
    with pytest.raises(ValueError, match="uint8"):
        wm.reset(starts.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="uint8"):
        wm.reset(starts[..., :2])  # two channels
    with pytest.raises(ValueError, match="uint8"):
        wm.reset(starts[0, :, :, 0])  # (H, W)
    with pytest.raises(ValueError, match="at least one start frame"):
        wm.reset(np.zeros((3, 0, SIZE, SIZE, 3), np.uint8))  # empty history
    with pytest.raises(ValueError, match="at least one start frame"):
        wm.reset(np.zeros((0, SIZE, SIZE, 3), np.uint8))  # no episodes


# ---------------------------------------------------------------------- bundles


def test_save_pretrained_copies_a_loadable_verified_bundle(wm, tmp_path, starts):
    out = wm.save_pretrained(tmp_path / "copy")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*read_config(wm.bundle)["files"], "config.json"]
    )
    assert read_config(out) == read_config(wm.bundle)
    copy = WorldModel.from_pretrained(out)
    a, _ = rollout(wm, starts, steps=2, seed=8)
    b, _ = rollout(copy, starts, steps=2, seed=8)
    assert np.array_equal(a, b)


def test_loading_a_corrupt_bundle_fails(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    path = bundle / "dynamics.safetensors"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CorruptFileError, match="dynamics.safetensors"):
        WorldModel.from_pretrained(bundle)


def test_loading_a_bundle_without_dynamics_fails(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    config = json.loads((bundle / "config.json").read_text())
    del config["dynamics"]
    (bundle / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptFileError, match="'dynamics'"):
        WorldModel.from_pretrained(bundle)


def test_read_only_frames_encode_without_a_warning(tiny_bundle, starts):
    import warnings

    wm = WorldModel.from_pretrained(tiny_bundle)
    frames = np.array(starts)
    frames.setflags(write=False)  # as a cached goal frame is
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        latents = wm.encode(frames)
    assert torch.equal(latents, wm.encode(np.array(starts)))
