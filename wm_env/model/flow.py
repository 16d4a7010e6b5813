"""Noise schedulers (flow matching, DDPM/DDIM), the training loss and the one-frame sampler.

Samplers are separate from the model (diffusers style): the DiT maps ``(x_t, t, actions)`` to a
prediction, a scheduler says how to noise data, what the model should predict and how to step
from one time to the next, and :func:`sample_next_frame` runs the loop.

One time convention for every scheduler: ``t`` in [0, 1], ``t = 0`` is data and ``t = 1`` noise;
the DiT embeds ``1000 t``. Times broadcast over the trailing dims of the latents: a ``(B, T)``
time gives every frame of every sample its own noise level (diffusion forcing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from wm_env.errors import lookup

#################################################################################
#                                Time shifting                                  #
#################################################################################


def time_shift(t, s: float):
    """``s t / (1 + (s - 1) t)``: identity for ``s = 1``, pushes times toward noise for ``s > 1``.

    Works on floats and tensors; keeps 0 and 1 fixed and is monotone for ``s > 0``.
    """
    if s <= 0:
        raise ValueError(f"shift must be > 0; got {s}")
    return s * t / (1 + (s - 1) * t)


def shift_for_latents(tokens_per_frame: int, patch_size: int, channels: int) -> float:
    """Resolution-dependent shift ``sqrt(m / 4096)``, ``m = tokens / patch**2 * channels``.

    ``tokens_per_frame`` counts latent tokens before patching (256 for a 16x16 grid).
    """
    if tokens_per_frame < 1 or patch_size < 1 or channels < 1:
        raise ValueError(
            f"need positive tokens, patch size and channels; got "
            f"{tokens_per_frame}, {patch_size}, {channels}"
        )
    return math.sqrt(tokens_per_frame / patch_size**2 * channels / 4096)


def _expand(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Time ``()`` or ``(B, T)`` as a tensor that broadcasts against ``x (B, T, ...)``."""
    t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
    return t.reshape(*t.shape, *([1] * (x.ndim - t.ndim)))


#################################################################################
#                               Scheduler protocol                              #
#################################################################################


@runtime_checkable
class NoiseScheduler(Protocol):
    """What the training loss and the sampler need from a noise schedule.

    Attributes:
        timesteps: after :meth:`set_timesteps` ``(n + 1,)`` float times from 1 (noise) down to
            0 (data); step ``i`` goes from ``timesteps[i]`` to ``timesteps[i + 1]``.
        context_time: the time label of clean context frames at sampling time.
    """

    timesteps: torch.Tensor
    context_time: float

    def sample_times(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Training times of the given shape, in [0, 1]."""

    def add_noise(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t`` from data ``x`` and Gaussian ``noise`` at times ``t``."""

    def target(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model is trained to predict from ``x_t``."""

    def set_timesteps(self, num_steps: int, device: torch.device | None = None) -> None:
        """Build the sampling schedule in :attr:`timesteps`."""

    def step(
        self,
        model_output: torch.Tensor,
        t: torch.Tensor | float,
        t_next: torch.Tensor | float,
        x: torch.Tensor,
    ) -> torch.Tensor:
        """Move ``x`` from time ``t`` to ``t_next`` given the model's prediction at ``t``."""

    def prepare_context(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Clean context latents as the model sees them at time label ``t``."""


#################################################################################
#                                 Flow matching                                 #
#################################################################################


class FlowMatchScheduler:
    """Rectified flow: ``x_t = (1 - t) x + t eps``, the model predicts ``eps - x``.

    Training times are logit-normal (``sigmoid(N(logit_mean, logit_std**2))``) then shifted;
    sampling is Euler on ``time_shift(linspace(1, 0, n + 1), shift)``. Context frames are fed
    unchanged with the time label ``context_time``, in training and in sampling alike (bundles
    record it; ones trained before it was recorded used 0).
    """

    def __init__(
        self,
        shift: float = 1.0,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        context_time: float = 0.01,
    ) -> None:
        if shift <= 0:
            raise ValueError(f"shift must be > 0; got {shift}")
        if logit_std <= 0:
            raise ValueError(f"logit_std must be > 0; got {logit_std}")
        if not 0.0 <= context_time < 1.0:
            raise ValueError(f"context_time must be in [0, 1); got {context_time}")
        self.shift, self.logit_mean, self.logit_std = shift, logit_mean, logit_std
        self.context_time = context_time
        self.timesteps = torch.empty(0)

    def __repr__(self) -> str:
        return (
            f"FlowMatchScheduler(shift={self.shift}, logit_mean={self.logit_mean}, "
            f"logit_std={self.logit_std}, context_time={self.context_time})"
        )

    def sample_times(self, shape, generator=None, device=None) -> torch.Tensor:
        z = torch.randn(shape, generator=generator, device=device)
        return time_shift(torch.sigmoid(self.logit_mean + self.logit_std * z), self.shift)

    def add_noise(self, x, noise, t) -> torch.Tensor:
        t = _expand(t, x)
        return ((1 - t) * x + t * noise).to(x.dtype)

    def target(self, x, noise, t=None) -> torch.Tensor:
        return noise - x

    def set_timesteps(self, num_steps: int, device=None) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1; got {num_steps}")
        ts = torch.linspace(1.0, 0.0, num_steps + 1, device=device)
        self.timesteps = time_shift(ts, self.shift)

    def step(self, model_output, t, t_next, x) -> torch.Tensor:
        dt = _expand(t_next, x) - _expand(t, x)
        return (x + dt * model_output).to(x.dtype)

    def prepare_context(self, x, t) -> torch.Tensor:
        return x


#################################################################################
#                            DDPM (v-prediction, DDIM)                          #
#################################################################################


def sigmoid_alphas_cumprod(
    num_train_timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0
) -> torch.Tensor:
    """``(N + 1,)`` cumulative alphas of the sigmoid schedule (Jabri et al. 2022), entry 0 = 1.

    The continuous ``g(s) = sigmoid((s (end - start) + start) / tau)`` gives
    ``abar(s) = (g(1) - g(s)) / (g(1) - g(0))``; betas ``1 - abar_k / abar_{k-1}`` are clipped to
    0.999, so ``abar`` at the last step is small but not 0.
    """
    s = torch.linspace(0, 1, num_train_timesteps + 1, dtype=torch.float64)
    g = torch.sigmoid((s * (end - start) + start) / tau)
    abar = (g[-1] - g) / (g[-1] - g[0])
    betas = (1 - abar[1:] / abar[:-1]).clamp(0, 0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


class DDPMScheduler:
    """Discrete DDPM with sigmoid betas, v-prediction and deterministic DDIM sampling.

    Step ``k`` in ``0..N-1`` of the usual integer convention is ``t = (k + 1) / N`` here and
    ``t = 0`` is the clean data, so the DiT's ``1000 t`` is ``k + 1`` for ``N = 1000``. Training
    draws a uniform step independently for every entry of ``shape`` (per frame: diffusion
    forcing). Context frames are scaled by ``sqrt(abar)`` at the label ``context_time``
    (``(14 + 1) / N``: a "stabilisation" noise level).
    """

    def __init__(self, num_train_timesteps: int = 1000, context_step: int = 14) -> None:
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2; got {num_train_timesteps}")
        if not 0 <= context_step < num_train_timesteps:
            raise ValueError(
                f"context_step must be in [0, {num_train_timesteps}); got {context_step}"
            )
        self.num_train_timesteps = num_train_timesteps
        self.alphas_cumprod = sigmoid_alphas_cumprod(num_train_timesteps).float()  # (N + 1,)
        self.context_time = (context_step + 1) / num_train_timesteps
        self.timesteps = torch.empty(0)

    def __repr__(self) -> str:
        return f"DDPMScheduler(num_train_timesteps={self.num_train_timesteps})"

    def alpha_bar(self, t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
        """``abar(t)`` broadcastable against ``like``; ``t`` is snapped to the ``1/N`` grid."""
        t = _expand(t, like)
        idx = (t * self.num_train_timesteps).round().long().clamp(0, self.num_train_timesteps)
        return self.alphas_cumprod.to(like.device)[idx]

    def sample_times(self, shape, generator=None, device=None) -> torch.Tensor:
        n = self.num_train_timesteps
        k = torch.randint(1, n + 1, shape, generator=generator, device=device)
        return k.float() / n

    def add_noise(self, x, noise, t) -> torch.Tensor:
        ab = self.alpha_bar(t, x)
        return (ab.sqrt() * x + (1 - ab).sqrt() * noise).to(x.dtype)

    def target(self, x, noise, t) -> torch.Tensor:
        ab = self.alpha_bar(t, x)
        return (ab.sqrt() * noise - (1 - ab).sqrt() * x).to(x.dtype)

    def set_timesteps(self, num_steps: int, device=None) -> None:
        """``n + 1`` evenly spaced times from 1 (``k = N - 1``) to 0 (clean), on the 1/N grid."""
        if not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_steps must be in [1, {self.num_train_timesteps}]; got {num_steps}"
            )
        n = self.num_train_timesteps
        ks = torch.linspace(n, 0, num_steps + 1, dtype=torch.float64).round()
        self.timesteps = (ks / n).float().to(device)

    def step(self, model_output, t, t_next, x) -> torch.Tensor:
        """DDIM (eta 0): recover ``x0`` and ``eps`` from ``v``, re-noise to ``t_next``."""
        ab, ab_next = self.alpha_bar(t, x), self.alpha_bar(t_next, x)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = a * x - s * model_output
        eps = s * x + a * model_output
        return (ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps).to(x.dtype)

    def prepare_context(self, x, t) -> torch.Tensor:
        return (self.alpha_bar(t, x).sqrt() * x).to(x.dtype)


#: name -> scheduler class, for configs and the CLI.
SCHEDULERS: dict[str, type] = {"flow": FlowMatchScheduler, "ddpm": DDPMScheduler}


def make_scheduler(name: str, **kwargs) -> NoiseScheduler:
    """``SCHEDULERS[name](**kwargs)`` with a "did you mean" error on unknown names."""
    return lookup("noise scheduler", name, SCHEDULERS)(**kwargs)


#################################################################################
#                                 Training loss                                 #
#################################################################################

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def training_loss(
    model_fn: ModelFn,
    scheduler: NoiseScheduler,
    x0: torch.Tensor,
    history: int,
    actions: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    history_noise_std: float = 0.3,
) -> torch.Tensor:
    """MSE between the model's prediction and the scheduler's target on the non-history frames.

    Args:
        model_fn: ``(x_t (B, T, L, D), t (B, T), actions (B, T, A)) -> (B, T, L, D)``.
        x0: clean latents ``(B, T, L, D)``; the first ``history`` frames are context.
        history: context frames, ``0 <= history < T``. They get light noise augmentation,
            ``(x + sigma eps) / sqrt(1 + sigma**2)``, ``sigma ~ |N(0, std**2)|`` per sample and
            frame (variance-preserving, as in the reference code), then exactly the treatment
            sampling gives context frames: ``scheduler.prepare_context`` and the time label
            ``scheduler.context_time`` (a model trained with one label and sampled with another
            sees inputs it never saw: 0.01 against 0 doubled the flow loss).
        actions: ``(B, T, A)``, ``actions[:, i]`` conditions frame ``i``.
        generator: for times and noise; must live on ``x0``'s device.

    Every future frame draws its own time (diffusion forcing), so a frame may follow frames
    noisier or cleaner than itself, as in one-frame-at-a-time sampling.
    """
    B, T = x0.shape[:2]
    if not 0 <= history < T:
        raise ValueError(f"history must be in [0, T={T}); got {history}")
    dev = x0.device
    future = x0[:, history:]  # (B, T - history, L, D)
    t_future = scheduler.sample_times((B, T - history), generator=generator, device=dev)
    noise = torch.randn(future.shape, generator=generator, device=dev, dtype=x0.dtype)
    x_future = scheduler.add_noise(future, noise, t_future)
    past = x0[:, :history]  # (B, history, L, D)
    if history and history_noise_std > 0:
        sigma = torch.randn(B, history, 1, 1, generator=generator, device=dev).abs()
        sigma = sigma * history_noise_std
        eps = torch.randn(past.shape, generator=generator, device=dev, dtype=x0.dtype)
        past = ((past + sigma * eps) / (1 + sigma**2).sqrt()).to(x0.dtype)
    past = scheduler.prepare_context(past, scheduler.context_time)
    x_t = torch.cat([past, x_future], dim=1)  # (B, T, L, D)
    t_past = torch.full((B, history), scheduler.context_time, device=dev)
    t = torch.cat([t_past, t_future.float()], dim=1)  # (B, T)
    pred = model_fn(x_t, t, actions)[:, history:]
    target = scheduler.target(future, noise, t_future)
    return F.mse_loss(pred.float(), target.float())


#################################################################################
#                                    Sampling                                   #
#################################################################################


@torch.no_grad()
def sample_next_frame(
    model,
    scheduler: NoiseScheduler,
    history: torch.Tensor | None,
    actions: torch.Tensor,
    *,
    num_steps: int = 10,
    generator: torch.Generator | None = None,
    cache=None,
    update_cache: bool = True,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate ONE new frame after ``history``: ``num_steps`` scheduler steps from noise.

    Args:
        model: ``model(x, t, actions, cache=None) -> prediction`` (a :class:`wm_env.model.dit.DiT`
            in eval mode; with a cache it also needs ``append_to_cache`` and ``config``).
        history: clean context latents ``(B, H, L, D)``. Without a cache the last
            ``model.config.max_frames - 1`` of them are used. With a cache they are appended
            to it first (prefill); pass None when the cache already holds the context.
        actions: ``(B, H + 1, A)`` conditions of the history frames and the new frame (only the
            last one is used when ``history`` is None or cached beforehand).
        cache: a :class:`wm_env.model.dit.TemporalKVCache`; each step then costs one frame of compute.
        update_cache: append the generated frame to ``cache`` (as context) when done.
        noise: the starting noise ``(B, 1, L, D)``; drawn from ``generator`` when None.

    Returns:
        ``(B, 1, L, D)`` the new frame's latents.
    """
    ctx_t = scheduler.context_time
    if history is not None:
        if actions.shape[1] != history.shape[1] + 1:
            raise ValueError(
                f"actions must cover the {history.shape[1]} history frames and the new one: "
                f"expected {history.shape[1] + 1} frames, got {actions.shape[1]}"
            )
        B, _, L, D = history.shape
        device, dtype = history.device, history.dtype
    elif cache is None:
        raise ValueError("sample_next_frame needs history latents or a filled cache")
    else:
        if cache.batch_size is None:
            raise ValueError("the cache is empty: pass history latents to prefill it")
        B, (L, D) = cache.batch_size, cache.frame_shape
        device, dtype = actions.device, cache.dtype
    if noise is None:
        noise = torch.randn(B, 1, L, D, generator=generator, device=device, dtype=dtype)
    x = noise
    scheduler.set_timesteps(num_steps, device=device)
    ts = scheduler.timesteps

    if cache is not None:
        if history is not None:
            context = scheduler.prepare_context(history, ctx_t)
            t_context = torch.full(history.shape[:2], ctx_t, device=device)
            model.append_to_cache(cache, context, t_context, actions[:, :-1])
        a_new = actions[:, -1:]
        for i in range(num_steps):
            t = ts[i].expand(B, 1)
            x = scheduler.step(model(x, t, a_new, cache=cache), t, ts[i + 1], x)
        if update_cache:
            t_context = torch.full((B, 1), ctx_t, device=device)
            model.append_to_cache(cache, scheduler.prepare_context(x, ctx_t), t_context, a_new)
        return x

    keep = max(getattr(model.config, "max_frames", history.shape[1] + 1) - 1, 0)
    history = history[:, history.shape[1] - min(keep, history.shape[1]) :]
    actions = actions[:, actions.shape[1] - history.shape[1] - 1 :]
    context = scheduler.prepare_context(history, ctx_t)
    t_context = torch.full(history.shape[:2], ctx_t, device=device)
    for i in range(num_steps):
        t = ts[i].expand(B, 1)
        pred = model(torch.cat([context, x], 1), torch.cat([t_context, t], 1), actions)
        x = scheduler.step(pred[:, -1:], t, ts[i + 1], x)
    return x
