"""The convolutional mean head (wm_env/model/mean_head.py) and its use in the DiT and the runtime."""

from __future__ import annotations

import pytest
import torch

from wm_env.model.dit import DiT, DiTConfig
from wm_env.model.mean_head import MeanHead

GRID, D, A = (4, 4), 3, 5


def test_shapes_zero_start_and_short_history():
    head = MeanHead(D, GRID, history=2, action_dim=A, width=16, depth=1)
    context = torch.randn(2, 2, 16, D)  # (B, l, N, D)
    action = torch.randn(2, A)
    out = head(context, action)
    assert out.shape == (2, 16, D)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output layer
    torch.nn.init.normal_(head.out[-1].weight)
    one = head(context[:, -1:], action)  # one frame: repeated as the history
    assert torch.allclose(one, head(context[:, -1:].repeat(1, 2, 1, 1), action))
    more = torch.cat([torch.randn(2, 3, 16, D), context], dim=1)  # only the last 2 count
    assert torch.allclose(head(more, action), head(context, action))
    # two views: each view is its own image, with the same action
    views = torch.cat([context, context.flip(2)], dim=2)  # (B, l, 2N, D)
    both = head(views, action)
    assert both.shape == (2, 32, D)
    assert torch.allclose(both[:, :16], head(context, action), atol=1e-6)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        MeanHead(D, GRID, 2, A, width=12)
    head = MeanHead(D, GRID, 2, A, width=8, depth=0)
    with pytest.raises(ValueError, match="context must be"):
        head(torch.randn(2, 2, 15, D), torch.randn(2, A))
    with pytest.raises(ValueError, match="condition must be"):
        head(torch.randn(2, 2, 16, D), torch.randn(2, A + 1))


def test_learns_an_action_dependent_shift():
    """Target: the last frame rolled one cell along x by the sign of action[0], plus action[1]."""
    torch.manual_seed(0)
    head = MeanHead(D, GRID, history=1, action_dim=A, width=32, depth=2)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)

    def batch(n=64):
        frames = torch.randn(n, 1, 16, D)
        actions = torch.randn(n, A)
        grid = frames[:, 0].reshape(n, *GRID, D)
        shifted = torch.where(
            actions[:, 0, None, None, None] > 0, grid.roll(1, dims=2), grid.roll(-1, dims=2)
        )
        return frames, actions, shifted.reshape(n, 16, D) + actions[:, 1, None, None]

    frames, actions, target = batch(256)
    first = torch.nn.functional.mse_loss(head(frames, actions), target).item()
    for _ in range(300):
        x, a, y = batch()
        loss = torch.nn.functional.mse_loss(head(x, a), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last = torch.nn.functional.mse_loss(head(frames, actions), target).item()
    assert last < 0.2 * first


def test_dit_owns_the_head_only_when_asked():
    base = dict(in_channels=D, grid=GRID, patch_size=1, preset=None, hidden=32, depth=1, heads=4)
    plain = DiT(DiTConfig(**base, action_dim=A))
    with_head = DiT(DiTConfig(**base, action_dim=A, mean_head_width=16, mean_head_depth=1))
    assert plain.mean_head is None
    assert not any(k.startswith("mean_head.") for k in plain.state_dict())
    assert any(k.startswith("mean_head.") for k in with_head.state_dict())
    extra = with_head.flops_per_frame(2, num_steps=4) - plain.flops_per_frame(2, num_steps=4)
    assert extra == with_head.mean_head.flops() > 0
    with pytest.raises(ValueError, match="mean head needs"):
        DiTConfig(**base, mean_head_width=-1)


def test_world_model_step_adds_the_mean_to_the_sampled_residual(tiny_bundle, monkeypatch):
    import numpy as np

    from wm_env.world_model import WorldModel

    wm = WorldModel.from_pretrained(tiny_bundle)
    assert wm.dit.mean_head is not None and wm.target == "delta"
    frames = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    wm.reset(frames, seed=0)
    last = wm.latest_latents.clone()
    monkeypatch.setattr(wm, "_sample", lambda state, cond: torch.zeros(2, 1, *wm.latent_shape))
    mean = torch.full(wm.latent_shape, 0.5)
    anchors = []

    def constant_mean(context, action, anchor=None):
        anchors.append(anchor)
        return mean.expand(2, -1, -1)

    monkeypatch.setattr(wm.dit.mean_head, "forward", constant_mean)
    wm.step(np.zeros((2, 7), dtype=np.float32), decode=False)
    expected = last + 0.5 * (wm.delta_std / wm.latent_std)
    assert torch.allclose(wm.latest_latents, expected, atol=1e-6)
    assert anchors == [None]  # a head without the anchor is not given one


def _rollout_data(seed: int = 0):
    """Latents (12, 2, 3) of one episode and env actions (12, 7); stats mapping [-1, 1] to itself."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(12, 2, 3, generator=g).cumsum(0)
    actions = torch.rand(12, 7, generator=g) * 2 - 1
    stats = {"q01": [-1.0] * 7, "q99": [1.0] * 7}
    return latents, actions, stats


def test_unrolled_mean_loss_is_zero_for_an_exact_head_and_scores_drift():
    from train.stage_dynamics import unrolled_mean_loss

    latents, actions, stats = _rollout_data()
    scale = torch.tensor([0.5, 2.0, 1.0])  # delta units -> latent units
    context_rows = torch.tensor([[0, 1], [4, 5]])  # (B, l)
    seen = []

    def exact(context, condition):  # knows the true next frame of each rollout step
        step = len(seen) + 1
        seen.append(condition)
        rows = context_rows[:, -1] + 1 + step
        return (latents[rows] - context[:, -1]) / scale

    first = (latents[context_rows[:, -1] + 1] - latents[context_rows[:, -1]]) / scale
    loss = unrolled_mean_loss(exact, first, context_rows, latents, actions, stats, 2, 1, scale)
    assert float(loss) < 1e-10
    # the condition of step k is the action taken at the frame before the one it predicts
    assert torch.allclose(seen[0][:, :7], actions[context_rows[:, -1] + 1])
    assert torch.allclose(seen[1][:, :7], actions[context_rows[:, -1] + 2])

    def still(context, condition):  # predicts "no change": the rollout stays at the last frame
        return torch.zeros_like(context[:, -1])

    zero_first = torch.zeros_like(first)
    loss = unrolled_mean_loss(still, zero_first, context_rows, latents, actions, stats, 2, 1, scale)
    last = latents[context_rows[:, -1]]
    expected = sum(
        torch.nn.functional.mse_loss(
            torch.zeros_like(last), (latents[context_rows[:, -1] + k] - last) / scale
        )
        for k in (2, 3)
    )
    assert torch.allclose(loss, expected)
