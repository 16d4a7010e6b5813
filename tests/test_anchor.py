"""Mean heads that read the episode's first frame (``--mean-head-anchor``, wm_env/model/mean_head.py).

Built on the moving-blob data of conftest.py and its tiny bundle.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from train.loop import OptimConfig
from train.stage_dynamics import DynamicsStageConfig, grown_state_dict, run_dynamics_stage
from wm_env.bundle import read_config
from wm_env.dataset.split import DataConfig
from wm_env.model.dit import DiT, DiTConfig
from wm_env.model.mean_head import MeanHead
from wm_env.world_model import WorldModel


def anchored_dynamics(bundle, blob_dataset, run_dir, steps: int, **overrides):
    kwargs = dict(
        bundle=bundle, data=DataConfig(dataset=blob_dataset), preset=None, hidden=64, depth=1,
        heads=4, patch_size=1, num_steps=4, action_dropout=0.0, mean_head_width=16,
        mean_head_depth=1, mean_head_anchor=True, val_every=0, run_dir=run_dir,
        optim=OptimConfig(steps=steps, batch_size=16, lr=3e-3, warmup_steps=1, ema_decay=0.0,
                          log_every=1, checkpoint_every=10**6),
    )  # fmt: skip
    kwargs.update(overrides)
    return DynamicsStageConfig(**kwargs)


@pytest.fixture(scope="module")
def anchored_bundle(tiny_bundle, blob_dataset, tmp_path_factory):
    """The tiny bundle grown into an anchored model and trained on (150 steps, a few s)."""
    base = tmp_path_factory.mktemp("anchored")
    bundle = shutil.copytree(tiny_bundle, base / "bundle")
    torch.manual_seed(0)
    run_dynamics_stage(
        anchored_dynamics(bundle, blob_dataset, base / "run", 150, init_from=tiny_bundle),
        progress=False,
    )
    return bundle


def test_an_anchored_mean_head_reads_the_first_frame_and_refuses_without_it():
    head = MeanHead(channels=4, grid=(4, 4), history=2, action_dim=3, width=8, depth=1, anchor=True)
    for p in head.parameters():  # trained-looking weights
        p.data.add_(torch.randn_like(p) * 0.1)
    context, action = torch.randn(2, 2, 16, 4), torch.randn(2, 3)
    first, other = torch.randn(2, 16, 4), torch.randn(2, 16, 4)
    assert head(context, action, first).shape == (2, 16, 4)
    assert not torch.allclose(head(context, action, first), head(context, action, other))
    with pytest.raises(ValueError, match="reads the first frame"):
        head(context, action)
    with pytest.raises(ValueError, match="reads the first frame"):
        head(context, action, torch.randn(2, 8, 4))
    plain = MeanHead(channels=4, grid=(4, 4), history=2, action_dim=3, width=8, depth=1)
    assert plain.inp.in_channels + 4 == head.inp.in_channels
    assert plain(context, action, first).shape == (2, 16, 4)  # a plain head ignores it


@pytest.mark.parametrize("grows_state", [False, True])
def test_a_grown_anchored_model_computes_what_its_start_computed(grows_state):
    """The first frame's channels start at zero: before training the anchor changes nothing,
    whether the start had states already or gains them in the same run."""
    common = dict(in_channels=4, grid=(4, 4), patch_size=2, preset=None, hidden=32, depth=1,
                  heads=4, action_dim=8, mean_head_width=8, mean_head_depth=1)  # fmt: skip
    torch.manual_seed(0)
    old_config = DiTConfig(**common, state_dim=0 if grows_state else 3)
    old = DiT(old_config).eval()
    for p in old.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    grown_config = DiTConfig(**common, state_dim=3, mean_head_anchor=True)
    grown = DiT(grown_config).eval()
    weights = grown_state_dict(grown, old.state_dict(), grown_config, grows_state, True)
    grown.load_state_dict(weights)
    context, cond, state = torch.randn(2, 2, 16, 4), torch.randn(2, 8), torch.randn(2, 3)
    first = torch.randn(2, 16, 4)
    old_cond = cond if grows_state else torch.cat([cond, state], 1)
    torch.testing.assert_close(
        grown.mean_head(context, torch.cat([cond, state], 1), first),
        old.mean_head(context, old_cond),
    )
    anchor_columns = grown.mean_head.inp.weight[:, -4:]
    assert not anchor_columns.any()


def test_the_anchored_stage_records_the_anchor_and_refuses_it_without_a_mean_head(
    anchored_bundle, blob_dataset, tmp_path
):
    dynamics = read_config(anchored_bundle)["dynamics"]
    assert dynamics["dit"]["mean_head_anchor"] is True
    assert dynamics["init_from"]["steps"] == 800
    with pytest.raises(ValueError, match="mean_head_anchor needs a mean head"):
        anchored_dynamics(anchored_bundle, blob_dataset, tmp_path / "r", 1, mean_head_width=0)


def test_a_grown_anchored_stage_starts_where_its_start_was(tiny_bundle, blob_dataset, tmp_path):
    grown = shutil.copytree(tiny_bundle, tmp_path / "grown")
    frozen = OptimConfig(steps=1, batch_size=16, lr=1e-12, warmup_steps=1, ema_decay=0.0,
                         log_every=1, checkpoint_every=10**6)  # fmt: skip
    run_dynamics_stage(
        anchored_dynamics(grown, blob_dataset, tmp_path / "run", 1, init_from=tiny_bundle,
                          optim=frozen),
        progress=False,
    )  # fmt: skip
    frames = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    actions = np.zeros((2, 7), np.float32)
    actions[:, 0] = 0.5
    source, model = WorldModel.from_pretrained(tiny_bundle), WorldModel.from_pretrained(grown)
    assert model.anchored and not source.anchored
    source.reset(frames, seed=3)
    model.reset(frames, seed=3)
    for _ in range(2):
        np.testing.assert_allclose(
            model.step(actions).astype(int), source.step(actions).astype(int), atol=1
        )


def test_rollouts_keep_the_first_start_frame_as_the_anchor(anchored_bundle, blob_render):
    model = WorldModel.from_pretrained(anchored_bundle)
    starts = np.stack([blob_render((10.0, 12.0)), blob_render((22.0, 20.0))])
    model.reset(starts, seed=0)
    first = model.encode(starts)  # (B, L, D) normalised latents, as the context holds them
    state = model.snapshot()
    torch.testing.assert_close(state.anchor, first)
    actions = np.zeros((2, 7), np.float32)
    actions[:, :2] = 0.8
    for _ in range(3):
        model.step(actions)
    torch.testing.assert_close(model.snapshot().anchor, first)  # the context moved on, not it
    assert not torch.allclose(model.snapshot().context[:, -1], first)
    # a restarted episode gets its own start as anchor; the other keeps its own
    other = blob_render((16.0, 8.0))[None]
    model.reset_subset([1], other)
    anchor = model.snapshot().anchor
    torch.testing.assert_close(anchor[0], first[0])
    torch.testing.assert_close(anchor[1], model.encode(other)[0])
    torch.testing.assert_close(model.snapshot().select([1, 1]).anchor, anchor[[1, 1]])
    # with a history of start frames, the oldest is the anchor
    history = np.stack([starts, starts[::-1]], axis=1)  # (B, 2, H, W, 3)
    model.reset(history, seed=0)
    torch.testing.assert_close(model.snapshot().anchor, first)


def test_the_trained_anchor_changes_the_prediction(anchored_bundle, blob_render):
    """After training, the mean head's channels for the first frame are in use."""
    model = WorldModel.from_pretrained(anchored_bundle)
    head = model.dit.mean_head
    assert head.inp.weight[:, -head.channels :].abs().sum() > 0
    context = model.encode(np.stack([blob_render((12.0, 12.0))] * 2))[:, None].repeat(1, 2, 1, 1)
    firsts = model.encode(np.stack([blob_render((8.0, 8.0)), blob_render((24.0, 24.0))]))
    condition = model.null_conditions(2, 1)[:, 0]
    with torch.no_grad():
        out = head(context, condition, firsts)
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_an_anchored_model_cannot_start_a_plain_one(anchored_bundle, blob_dataset, tmp_path):
    target = shutil.copytree(anchored_bundle, tmp_path / "target")
    with pytest.raises(ValueError, match="another DiT.*mean_head_anchor"):
        run_dynamics_stage(
            dataclasses.replace(
                anchored_dynamics(target, blob_dataset, tmp_path / "r", 1, mean_head_anchor=False),
                init_from=anchored_bundle,
            ),
            progress=False,
        )
