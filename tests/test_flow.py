"""Noise schedulers, training loss and one-frame sampling (wm_env/model/flow.py)."""

from __future__ import annotations

import math

import pytest
import torch

from wm_env.errors import UnknownNameError
from wm_env.model.dit import DiT, DiTConfig
from wm_env.model.flow import (
    DDPMScheduler,
    FlowMatchScheduler,
    NoiseScheduler,
    make_scheduler,
    sample_next_frame,
    shift_for_latents,
    time_shift,
    training_loss,
)

# ----------------------------------------------------------------------------- time shift


def test_time_shift_properties():
    t = torch.linspace(0, 1, 101)
    torch.testing.assert_close(time_shift(t, 1.0), t)
    for s in (0.5, 1.22, 3.0):
        shifted = time_shift(t, s)
        assert shifted[0] == 0 and shifted[-1] == 1
        assert (shifted.diff() > 0).all()
    inner = t[1:-1]
    assert (time_shift(inner, 3.0) > inner).all()  # s > 1 pushes toward noise
    assert (time_shift(inner, 0.5) < inner).all()
    with pytest.raises(ValueError, match="shift"):
        time_shift(t, 0.0)


def test_shift_for_latents():
    assert shift_for_latents(256, 2, 96) == pytest.approx(math.sqrt(1.5))  # about 1.22
    assert shift_for_latents(256, 1, 16) == pytest.approx(1.0)


def test_logit_normal_times():
    gen = torch.Generator().manual_seed(0)
    t = FlowMatchScheduler(shift=1.0).sample_times((20_000,), generator=gen)
    assert t.min() > 0 and t.max() < 1
    assert t.median().item() == pytest.approx(0.5, abs=0.02)
    shifted = FlowMatchScheduler(shift=3.0).sample_times((20_000,), generator=gen)
    assert shifted.median().item() == pytest.approx(0.75, abs=0.02)  # time_shift(0.5, 3)


def test_make_scheduler_registry():
    assert isinstance(make_scheduler("flow", shift=1.2), FlowMatchScheduler)
    with pytest.raises(UnknownNameError, match="did you mean 'ddpm'"):
        make_scheduler("ddpn")


# ----------------------------------------------------------------------------- contract


def oracle(scheduler: NoiseScheduler, x_star: torch.Tensor):
    """The exact prediction when the data distribution is the single point ``x_star``.

    ``x_t = a(t) x* + b(t) eps`` is linear, so ``eps = (x_t - a x*) / b``; read ``a`` and ``b``
    off ``add_noise`` so the same oracle serves every scheduler.
    """

    def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ax = scheduler.add_noise(x_star, torch.zeros_like(x_star), t)
        b = scheduler.add_noise(torch.zeros_like(x_star), torch.ones_like(x_star), t)
        eps = (x_t - ax) / b
        return scheduler.target(x_star, eps, t)

    return predict


class SchedulerContract:
    """Every NoiseScheduler passes these (diffusers' SchedulerCommonTest pattern)."""

    def make(self) -> NoiseScheduler:
        raise NotImplementedError

    def test_protocol(self):
        assert isinstance(self.make(), NoiseScheduler)

    def test_sample_times(self):
        gen = torch.Generator().manual_seed(0)
        t = self.make().sample_times((64, 5), generator=gen)
        assert t.shape == (64, 5) and t.min() > 0 and t.max() <= 1
        assert t.std(dim=1).min() > 0  # independent per frame
        gen.manual_seed(0)
        torch.testing.assert_close(self.make().sample_times((64, 5), generator=gen), t)

    def test_noise_endpoints_and_per_frame_times(self):
        s = self.make()
        x, eps = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
        torch.testing.assert_close(s.add_noise(x, eps, torch.zeros(2, 3)), x)
        t = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.5]])
        x_t = s.add_noise(x, eps, t)
        torch.testing.assert_close(x_t[1, 1], x[1, 1])
        assert (x_t[0, 2] - eps[0, 2]).abs().max() < 1e-2  # t = 1 is (nearly) pure noise

    def test_timesteps(self):
        s = self.make()
        s.set_timesteps(10)
        ts = s.timesteps
        assert ts.shape == (11,) and ts[0] == 1 and ts[-1] == 0 and (ts.diff() < 0).all()

    def test_oracle_sampling_recovers_the_data_point(self):
        s = self.make()
        gen = torch.Generator().manual_seed(0)
        x_star = torch.randn(2, 1, 8, 3, generator=gen)
        predict = oracle(s, x_star)
        s.set_timesteps(10)
        runs = []
        for _ in range(2):
            x = torch.randn(x_star.shape, generator=gen.manual_seed(1))
            for i in range(10):
                t = s.timesteps[i].expand(2, 1)
                x = s.step(predict(x, t), t, s.timesteps[i + 1], x)
            runs.append(x)
        torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)  # deterministic
        torch.testing.assert_close(runs[0], x_star, atol=1e-4, rtol=1e-4)


class TestFlowMatchScheduler(SchedulerContract):
    def make(self):
        return FlowMatchScheduler(shift=1.22)

    def test_data_from_noisy_sample_and_velocity(self):
        s = self.make()
        x, eps = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
        t = torch.rand(2, 3)
        x_t, v = s.add_noise(x, eps, t), s.target(x, eps, t)
        torch.testing.assert_close(v, eps - x)
        torch.testing.assert_close(x_t - t[..., None, None] * v, x)

    def test_schedule_is_shifted(self):
        s = self.make()
        s.set_timesteps(4)
        torch.testing.assert_close(s.timesteps, time_shift(torch.linspace(1, 0, 5), 1.22))


class TestDDPMScheduler(SchedulerContract):
    def make(self):
        return DDPMScheduler()

    def test_alphas(self):
        abar = self.make().alphas_cumprod
        assert abar.shape == (1001,) and abar[0] == 1
        assert (abar.diff() < 0).all() and 0 < abar[-1] < 1e-4
        assert 0.99 < abar[1] < 1

    def test_v_prediction_recovers_data(self):
        s = self.make()
        x, eps = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
        t = s.sample_times((2, 3), generator=torch.Generator().manual_seed(0))
        ab = s.alpha_bar(t, x)
        x_t, v = s.add_noise(x, eps, t), s.target(x, eps, t)
        torch.testing.assert_close(ab.sqrt() * x_t - (1 - ab).sqrt() * v, x, atol=1e-5, rtol=0)

    def test_ddim_timesteps_on_the_training_grid(self):
        s = self.make()
        s.set_timesteps(10)
        torch.testing.assert_close(s.timesteps, torch.linspace(1, 0, 11))


# ----------------------------------------------------------------------------- with the DiT


def tiny_dit(seed: int = 0, **overrides) -> DiT:
    kwargs = dict(
        in_channels=4,
        grid=(4, 4),
        patch_size=1,
        preset=None,
        hidden=32,
        depth=2,
        heads=2,
        max_frames=4,
        action_dropout=0.0,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return DiT(DiTConfig(**kwargs))


def test_training_loss_only_on_future_frames():
    gen = torch.Generator().manual_seed(0)
    x0, actions = torch.randn(2, 3, 16, 4, generator=gen), torch.randn(2, 3, 7, generator=gen)
    seen = {}

    scheduler = FlowMatchScheduler()
    context = scheduler.context_time  # history frames get the label sampling gives them

    def model_fn(x_t, t, a):
        seen["x_t"], seen["t"] = x_t, t
        return torch.zeros_like(x_t) + 100.0 * (t[..., None, None] == context)  # huge on history

    loss = training_loss(model_fn, scheduler, x0, 1, actions, generator=gen)
    assert torch.equal(seen["t"][:, 0], torch.full((2,), context))
    assert (seen["t"][:, 1:] != context).all() and (seen["t"][:, 1:] > 0).all()
    assert 0 < (seen["x_t"][:, 0] - x0[:, 0]).abs().max() < 3  # light augmentation
    assert loss.item() < 10  # the history frames' 100s are not in the loss
    with pytest.raises(ValueError, match="history"):
        training_loss(model_fn, FlowMatchScheduler(), x0, 3, actions)


@pytest.mark.parametrize("scheduler", [FlowMatchScheduler(), DDPMScheduler()])
def test_tiny_dit_overfits_one_clip(scheduler):
    model = tiny_dit().train()
    gen = torch.Generator().manual_seed(0)
    clip = torch.randn(1, 3, 16, 4, generator=gen).expand(8, -1, -1, -1)
    actions = torch.randn(1, 3, 7, generator=gen).expand(8, -1, -1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)

    def loss_fn():
        return training_loss(model, scheduler, clip, 1, actions, generator=gen)

    with torch.no_grad():
        initial = sum(loss_fn().item() for _ in range(10)) / 10
    for _ in range(150):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = sum(loss_fn().item() for _ in range(10)) / 10
    assert final < initial / 5, (initial, final)


@pytest.mark.parametrize("scheduler", [FlowMatchScheduler(shift=1.22), DDPMScheduler()])
def test_sample_next_frame_cached_equals_uncached(scheduler):
    model = tiny_dit()
    with torch.no_grad():  # leave the zero-init so the prediction depends on the inputs
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.3)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    history = torch.randn(2, 2, 16, 4, generator=gen)
    actions = torch.randn(2, 4, 7, generator=gen)
    noise = torch.randn(2, 1, 16, 4, generator=gen)
    plain = sample_next_frame(model, scheduler, history, actions[:, :3], num_steps=4, noise=noise)
    assert plain.shape == (2, 1, 16, 4) and torch.isfinite(plain).all()
    cache = model.new_cache()
    cached = sample_next_frame(
        model, scheduler, history, actions[:, :3], num_steps=4, noise=noise, cache=cache
    )
    torch.testing.assert_close(cached, plain, atol=1e-4, rtol=1e-4)
    assert cache.next_position == 3  # history (2) + the generated frame
    # the next frame from the cache alone equals the uncached sampler on the 3 frames
    noise2 = torch.randn(2, 1, 16, 4, generator=gen)
    nxt = sample_next_frame(
        model, scheduler, None, actions[:, 3:], num_steps=4, noise=noise2, cache=cache
    )
    ref = sample_next_frame(
        model, scheduler, torch.cat([history, plain], 1), actions, num_steps=4, noise=noise2
    )
    torch.testing.assert_close(nxt, ref, atol=1e-4, rtol=1e-4)
    # the generator makes sampling reproducible
    a = sample_next_frame(model, scheduler, history, actions[:, :3], generator=gen.manual_seed(5))
    b = sample_next_frame(model, scheduler, history, actions[:, :3], generator=gen.manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
