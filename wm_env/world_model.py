"""The world-model runtime: frames in, actions in, predicted frames out.

``WorldModel.from_pretrained(bundle)`` loads the encoder (+ adapter), the pixel decoder (or the
encoder's own decoder), and the DiT transition model with its noise scheduler. ``reset(frames)``
encodes the start frames into the context, ``step(actions)`` generates one frame per episode in
the batch (one batched model call per denoising step) and decodes it. Generation is
autoregressive over a window of the last ``history`` frames, exactly the clips the DiT was
trained on: each step attends to those frames alone. With ``use_cache`` (the default) their
temporal keys and values are computed once per step and reused by every denoising step; a
cache that slid across steps would not compute the same thing (see :meth:`WorldModel._sample`).
A rollout costs time linear in its length; it is deterministic for a given seed, and
``snapshot()`` / ``restore()`` copy its state (for planners that branch from one start).

Latents inside the runtime are normalised per channel with the statistics stored in the bundle.
Two dynamics targets exist (``dynamics.target`` in the bundle): ``frame`` (the DiT generates the
next frame's latents, as in the paper) and ``delta`` (it generates the normalised change from the
last frame; the default for small CPU models, see the README).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wm_env.bundle import (
    ENCODER_DECODER,
    BundleError,
    decoder_names,
    decoder_section,
    latent_space_hashes,
    load_weights,
    verify,
)
from wm_env.options import WorldModelOptions, torch_dtype
from wm_env.spaces import ACTION_DIM

# ---------------------------------------------------------------------- component builders


def build_encoder_from_config(
    config: dict[str, Any], bundle: str | os.PathLike, device: str | torch.device = "cpu"
):
    """The frozen encoder of a bundle (weights from the bundle, or a pretrained local path)."""
    from wm_env.model.encoders import VAEEncoder, build_encoder
    from wm_env.model.jepa import JEPAEncoder

    section = config["encoder"]
    trained_here = {"vae_config": VAEEncoder, "jepa_config": JEPAEncoder}  # weights in the bundle
    kind = next((key for key in trained_here if key in section), None)
    if kind is not None:
        encoder = trained_here[kind].from_config(section[kind], image_size=section["image_size"])
        encoder.load_state_dict(load_weights(bundle, config, "encoder"))
    else:
        encoder = build_encoder(section["name"], **section.get("options", {}))
    return encoder.freeze().to(device).eval()


def build_adapter_from_config(
    config: dict[str, Any], bundle: str | os.PathLike, device: str | torch.device = "cpu"
):
    """The frozen adapter of a bundle (``identity`` when it has none)."""
    from wm_env.model.adapters import build_adapter

    section = config.get("adapter") or {"name": "identity", "options": {}}
    adapter = build_adapter(
        section["name"], config["encoder"]["latent_dim"], **section.get("options", {})
    )
    if section.get("weights"):
        adapter.load_state_dict(load_weights(bundle, config, "adapter"))
    return adapter.freeze().to(device).eval()


def build_pixel_decoder_from_config(
    config: dict[str, Any],
    bundle: str | os.PathLike,
    device: str | torch.device = "cpu",
    name: str | None = None,
):
    """The pixel decoder that renders frames, or None when the encoder decodes itself.

    ``name`` None: the bundle's ``decoder`` section if it has one, else the encoder's own
    decoder. ``"encoder"``: the encoder's own decoder. Any other name: the pixel decoder of the
    bundle's ``decoder_<name>`` section (e.g. a lighter one, ``wmgym train decoder --name``).
    """
    from wm_env.errors import UnknownNameError
    from wm_env.model.decoder import PixelDecoder, PixelDecoderConfig

    offered = decoder_names(config)
    if name is not None and name not in offered:
        raise UnknownNameError("decoder", name, offered)
    if name == ENCODER_DECODER:
        return None
    key = decoder_section(name)
    section = config.get(key)
    if not section:
        return None
    decoder = PixelDecoder(PixelDecoderConfig(**section["config"]))
    decoder.load_state_dict(load_weights(bundle, config, key))
    return decoder.to(device).eval().requires_grad_(False)


def build_dit_from_config(
    config: dict[str, Any],
    bundle: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
):
    """The DiT of a bundle's ``dynamics`` section (weights loaded when ``bundle`` is given)."""
    from wm_env.model.dit import DiT, DiTConfig

    dit = DiT(DiTConfig(**config["dynamics"]["dit"]))
    if bundle is not None:
        dit.load_state_dict(load_weights(bundle, config, "dynamics"))
    return dit.to(device).eval().requires_grad_(False)


def build_scheduler_from_config(config: dict[str, Any]):
    """The noise scheduler named in the bundle's ``dynamics.scheduler`` section."""
    from wm_env.model.flow import make_scheduler

    section = dict(config["dynamics"]["scheduler"])
    return make_scheduler(section.pop("name"), **section)


def cast_matmul_weights(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Store the weights of ``module``'s linear and convolution layers in ``dtype``, in place.

    Under autocast to ``dtype`` this computes exactly what fp32 weights would (autocast rounds
    them to ``dtype`` at every call), without the per-call weight casts. Norm layers keep fp32
    (autocast runs them in fp32). The module must then only be called under that autocast.
    """
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            layer.to(dtype)
    return module


# ---------------------------------------------------------------------- action normalisation


DECODE_CHUNK_CPU = 8  # frames per decoder call on CPU (see WorldModel.decode)


def normalize_actions(
    actions: torch.Tensor, stats: dict[str, Any], frame_skip: int = 1
) -> torch.Tensor:
    """Env actions ``(..., frame_skip, 7)`` -> DiT conditions ``(..., frame_skip * 7 + 1)``.

    The six motion dims map q01..q99 to [-1, 1] (as OpenVLA does); a dim that is constant in the
    data (q01 == q99) carries nothing the model could have learned and maps to 0 (dividing by
    its zero range would blow any other value up by 1e6). The gripper is kept as is. The extra
    last element is 0 for real actions; the null action is zeros with it set to 1.
    """
    q01 = torch.as_tensor(stats["q01"], dtype=actions.dtype, device=actions.device)[:ACTION_DIM]
    q99 = torch.as_tensor(stats["q99"], dtype=actions.dtype, device=actions.device)[:ACTION_DIM]
    span = q99 - q01
    varies = span > 1e-6
    scaled = torch.where(varies, 2 * (actions - q01) / torch.where(varies, span, 1.0) - 1, 0.0)
    scaled[..., ACTION_DIM - 1] = actions[..., ACTION_DIM - 1]
    flat = scaled.reshape(*actions.shape[:-2], frame_skip * ACTION_DIM)
    return torch.cat([flat, torch.zeros_like(flat[..., :1])], dim=-1)


def condition_dim(frame_skip: int) -> int:
    """Width of one frame's DiT condition: the flattened actions plus the null flag."""
    return frame_skip * ACTION_DIM + 1


# ---------------------------------------------------------------------- runtime


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] (clamped here) -> uint8 numpy."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


@dataclass
class WorldModelState:
    """Everything :meth:`WorldModel.step` depends on (see :meth:`WorldModel.snapshot`)."""

    context: torch.Tensor  # (B, history, L, D) normalised latents of the last frames
    context_actions: torch.Tensor  # (B, history, A) their conditions
    generator_states: list[torch.Tensor]  # one noise generator per episode
    steps: int
    # (B, H, W, 3) float: start frame minus its decoded latents (residual decoding), or None
    residual: torch.Tensor | None = None
    # (B, history, S) normalised robot states of the context frames (state models), or None
    states: torch.Tensor | None = None
    # (B, L, D) normalised latents of the first start frame (models whose mean head reads it)
    anchor: torch.Tensor | None = None

    def clone(self) -> WorldModelState:
        return WorldModelState(
            self.context.clone(),
            self.context_actions.clone(),
            [g.clone() for g in self.generator_states],
            self.steps,
            None if self.residual is None else self.residual.clone(),
            None if self.states is None else self.states.clone(),
            None if self.anchor is None else self.anchor.clone(),
        )

    def select(self, indices) -> WorldModelState:
        """A state holding episodes ``indices`` of this one, in that order (repeats allowed).

        ``state.select([0] * n)`` replicates episode 0 ``n`` times, e.g. so that a planner rolls
        ``n`` candidate action sequences forward from one start in a single batch; the copies
        share the episode's noise generator state, so they draw the same noise.
        """
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64)).reshape(-1)
        batch = self.context.shape[0]
        if len(index) == 0 or int(index.min()) < 0 or int(index.max()) >= batch:
            raise ValueError(f"indices must be non-empty and in [0, {batch}); got {indices}")
        device_index = index.to(self.context.device)
        return WorldModelState(
            self.context.index_select(0, device_index),
            self.context_actions.index_select(0, device_index),
            [self.generator_states[i].clone() for i in index.tolist()],
            self.steps,
            None if self.residual is None else self.residual.index_select(0, device_index),
            None if self.states is None else self.states.index_select(0, device_index),
            None if self.anchor is None else self.anchor.index_select(0, device_index),
        )


class WorldModel:
    """A trained world model, batched over episodes.

    Args (use :meth:`from_pretrained`): the bundle path and config, the built components, the
    device, the number of denoising steps, whether to use the KV cache, the autocast dtype, the
    sampling temperature, whether to decode frames residually, and the name of the decoder.

    Residual decoding (the default): an episode's frames are its start frame plus the decoded
    change since then, ``x_start + D(z_t) - D(z_start)``. What the model leaves unchanged (table,
    background, untouched objects) keeps the start frame's detail instead of the autoencoder's
    blur, and the predicted motion is added on top. Decoding the true next latents this way
    scores 24.8 dB against 23.4 dB decoded plainly (64x64 sim, models/default).
    """

    def __init__(
        self,
        bundle: str | os.PathLike,
        config: dict[str, Any],
        encoder,
        adapter,
        pixel_decoder,
        dit,
        scheduler,
        device: torch.device,
        num_steps: int | None = None,
        use_cache: bool = True,
        dtype: torch.dtype | None = None,
        temperature: float | None = None,
        residual_decoding: bool = True,
        decoder: str | None = None,
    ) -> None:
        self.bundle = Path(bundle)
        self.decoder_name = decoder  # None: the bundle's default (see from_pretrained)
        self.config = config
        self.encoder, self.adapter, self.pixel_decoder = encoder, adapter, pixel_decoder
        self.dit, self.scheduler = dit, scheduler
        self.device = device
        self.dtype = dtype
        dynamics = config["dynamics"]
        self.history = int(dynamics["history"])
        self.frame_skip = int(dynamics.get("frame_skip", 1))
        self.target = dynamics.get("target", "frame")
        if num_steps is not None and (
            isinstance(num_steps, bool)
            or not isinstance(num_steps, (int, np.integer))
            or num_steps < 1
        ):
            raise ValueError(f"num_steps must be an integer >= 1; got {num_steps!r}")
        self.num_steps = int(num_steps or dynamics.get("num_steps", 10))
        # Scale of the starting noise: 1 samples the learned distribution; 0 follows the flow
        # from its centre (deterministic, lower variance, blurrier).
        self.temperature = float(
            dynamics.get("temperature", 1.0) if temperature is None else temperature
        )
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0; got {self.temperature}")
        self.use_cache = use_cache
        self.residual_decoding = bool(residual_decoding)
        self.latent_mean = torch.tensor(dynamics["latent_mean"], device=device)  # (D,)
        self.latent_std = torch.tensor(dynamics["latent_std"], device=device)  # (D,)
        self.delta_std = torch.tensor(
            dynamics.get("delta_std", dynamics["latent_std"]), device=device
        )
        self.action_stats = config["actions"]["stats"]
        self.state_norm = None  # state models: raw robot states <-> the units the DiT reads
        if int(dynamics["dit"].get("state_dim", 0)):
            from wm_env.model.state_head import StateNormalizer

            self.state_norm = StateNormalizer(dynamics, device)
        self.latent_shape = (int(dynamics["tokens"]), int(self.latent_mean.shape[0]))  # (L, D)
        self.image_size = tuple(
            config["encoder"].get("frame_size", [config["encoder"]["image_size"]] * 2)
        )
        self._state: WorldModelState | None = None
        self.last_step_seconds = 0.0
        # Convolutional decoders on CPU run faster in small chunks (their activations stay in
        # cache): 64 frames decode in 21.7 ms/frame at once and 8.0 ms/frame in chunks of 8.
        self.decode_chunk = DECODE_CHUNK_CPU if self.device.type == "cpu" else None

    @property
    def fps(self) -> float:
        """Frames per second of the generated video (the dataset's rate over the frame skip)."""
        return float(self.config["dynamics"].get("dataset", {}).get("fps", 5.0)) / self.frame_skip

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        options: WorldModelOptions | dict[str, Any] | None = None,
        **settings: Any,
    ) -> WorldModel:
        """Load and verify a bundle directory (every weight file's size and SHA-256).

        How it runs is a :class:`wm_env.options.WorldModelOptions`, given whole (``options``),
        as a dict, or as its fields by name (``from_pretrained(path, num_steps=2)``), the
        names on top of ``options``.

        ``dtype`` is the autocast dtype of sampling, encoding and decoding: None or ``"fp32"``
        (float32), ``"bf16"`` or ``"fp16"``. With a low dtype the linear and convolution
        weights are stored in it (:func:`cast_matmul_weights`), so the modules are meant to be
        called through this runtime (or under that autocast). On a CPU with native bf16
        (avx512_bf16 or AMX), ``"bf16"`` cuts the decoder's time in batches by a third to a
        half; on one without, it is slower.

        ``decoder`` picks what renders the frames (:func:`decoder_names`): None, the bundle's
        default; ``"encoder"``, the encoder's own decoder; another name, the bundle's pixel
        decoder of that name (models/default has ``"light"``, 5x cheaper per frame).
        """
        options = WorldModelOptions.build(options, **settings)
        config = verify(path)
        for section in ("encoder", "dynamics", "actions"):
            if section not in config:
                from wm_env.errors import CorruptFileError

                raise CorruptFileError(
                    Path(path) / "config.json",
                    f"has no {section!r} section: train that stage first",
                )
        trained_on = config["dynamics"].get("encoder_sha256")
        if trained_on is not None and trained_on != latent_space_hashes(config):
            raise BundleError(
                f"{path}: the dynamics model was trained on other encoder/adapter weights than the bundle now holds; "
                f"retrain it (`wmgym train dynamics --bundle {path}`)"
            )
        device = torch.device(options.device)
        dit = build_dit_from_config(config, path, device)
        if options.compile:
            dit = torch.compile(dit)
        low = None if options.dtype in (None, "fp32") else torch_dtype(options.dtype)
        encoder = build_encoder_from_config(config, path, device)
        adapter = build_adapter_from_config(config, path, device)
        pixel_decoder = build_pixel_decoder_from_config(config, path, device, options.decoder)
        if low is not None:
            for part in (encoder, adapter, pixel_decoder, dit):
                if part is not None:
                    cast_matmul_weights(part, low)
        return cls(
            path,
            config,
            encoder,
            adapter,
            pixel_decoder,
            dit,
            build_scheduler_from_config(config),
            device,
            num_steps=options.num_steps,
            use_cache=options.use_cache,
            dtype=low,
            temperature=options.temperature,
            residual_decoding=options.residual_decoding,
            decoder=options.decoder,
        )

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Copy the bundle (config and verified weight files) to ``path``."""
        import shutil

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        for name in [*self.config.get("files", {}), "config.json"]:
            shutil.copy2(self.bundle / name, out / name)
        verify(out)
        return out

    # ------------------------------------------------------------------ latents <-> frames
    @torch.no_grad()
    def encode(self, frames) -> torch.Tensor:
        """uint8 frames ``(B, H, W, 3)`` -> normalised latents ``(B, L, D)``."""
        with self._autocast():
            latents = self.adapter.encode(
                # writable: torch warns on (and must not share) read-only arrays such as cached goals
                self.encoder.encode(
                    torch.as_tensor(np.require(frames, requirements="W"), device=self.device)
                )
            )
        return (latents.float() - self.latent_mean) / self.latent_std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, residual: torch.Tensor | None = None) -> np.ndarray:
        """Normalised latents ``(B, L, D)`` -> uint8 frames ``(B, H, W, 3)``.

        Plain decoding, or residual decoding with ``residual`` ``(B, H, W, 3)`` (rows of
        :attr:`residuals`): then the frames equal what :meth:`step` returns for those latents,
        so a caller can step with ``decode=False`` and decode only the frames it needs.
        """
        images = self._decode_float(latents)
        return _to_uint8(images if residual is None else images + residual)

    @property
    def residuals(self) -> torch.Tensor | None:
        """float ``(B, H, W, 3)``: each episode's start frame minus its decoded latents (None
        with plain decoding); pass rows of it to :meth:`decode`."""
        return self._require_state().residual

    def unnormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``(..., L, D)`` -> the encoder's (+ adapter's) own latents."""
        return latents * self.latent_std + self.latent_mean

    def _decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``(B, L, D)`` -> float images ``(B, H, W, 3)``, unclamped."""
        raw = self.unnormalize(latents)  # (B, L, D)
        chunks = raw.split(self.decode_chunk) if self.decode_chunk else (raw,)
        with self._autocast():
            return torch.cat([self._decode_raw(chunk).float() for chunk in chunks])

    def _start_frames(
        self, frames, latents: torch.Tensor
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """What episodes starting from ``frames`` ``(B, [l,] H, W, 3)`` with last-frame latents
        ``(B, L, D)`` show first, and their residual for :meth:`decode` (None when plain).

        With residual decoding the residual is the start frame (resized as the encoder resizes
        it) minus its decoded latents, so the first frame shown is the start frame itself.
        """
        decoded = self._decode_float(latents)  # (B, H, W, 3)
        if not self.residual_decoding:
            return _to_uint8(decoded), None
        from wm_env.model.encoders import resize_and_normalize

        last = torch.as_tensor(np.asarray(frames), device=self.device)
        last = (last[:, -1] if last.ndim == 5 else last).float() / 255  # (B, H, W, 3)
        last = resize_and_normalize(last, self.image_size, None, None).permute(0, 2, 3, 1)
        return _to_uint8(last), last - decoded

    def _decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Un-normalised latents ``(b, L, D)`` -> float images ``(b, H, W, 3)`` in [0, 1]."""
        if self.pixel_decoder is not None:
            return self.pixel_decoder(raw)
        return self.encoder.decode(self.adapter.decode(raw))

    # ------------------------------------------------------------------ episodes
    @property
    def batch_size(self) -> int | None:
        return None if self._state is None else self._state.context.shape[0]

    @property
    def uses_states(self) -> bool:
        """Whether the model conditions on the robot's state (``reset`` then needs ``states``)."""
        return self.state_norm is not None

    @property
    def anchored(self) -> bool:
        """Whether the mean head reads the episode's first frame (the first start frame given
        to ``reset``), so that what the arm hides can come back as it was."""
        mean_head = getattr(self.dit, "mean_head", None)
        return bool(getattr(mean_head, "anchor", False))

    def null_conditions(self, batch: int, frames: int) -> torch.Tensor:
        cond = torch.zeros(batch, frames, condition_dim(self.frame_skip), device=self.device)
        cond[..., -1] = 1.0
        return cond

    def _history_states(self, states, batch: int) -> torch.Tensor | None:
        """Raw robot states ``(B, S)`` or ``(B, l, S)`` -> normalised ``(B, history, S)``."""
        if self.state_norm is None:
            return None
        if states is None:
            raise ValueError(
                f"{self.bundle} conditions on the robot's state: reset(frames, states=...) needs "
                f"the start state, float ({batch}, {self.state_norm.dim}) (the dataset's "
                "observation.state, the sim's proprio)"
            )
        states = torch.as_tensor(np.asarray(states, dtype=np.float32), device=self.device)
        if states.ndim == 2:
            states = states[:, None]
        if states.ndim != 3 or states.shape[0] != batch or states.shape[2] != self.state_norm.dim:
            raise ValueError(
                f"states must be ({batch}, {self.state_norm.dim}) or ({batch}, l, "
                f"{self.state_norm.dim}); got {tuple(states.shape)}"
            )
        if not torch.isfinite(states).all():
            raise ValueError("states contain NaN or inf")
        states = states[:, -self.history :]
        if states.shape[1] < self.history:  # too short a history: repeat the first state
            pad = states[:, :1].expand(batch, self.history - states.shape[1], -1)
            states = torch.cat([pad, states], dim=1)
        return self.state_norm.normalize(states)

    STATE_SPAN = 10.0  # the state space: the training data's mean +- this many standard deviations

    def state_space(self):
        """The observation space of the state this model carries (None for models without):
        the training data's mean +- :attr:`STATE_SPAN` standard deviations, which
        :attr:`latest_states` are kept inside."""
        if self.state_norm is None:
            return None
        from wm_env.spaces import state_space

        mean, std = self.state_norm.mean.cpu().numpy(), self.state_norm.std.cpu().numpy()
        span = self.STATE_SPAN * std
        return state_space(len(mean), mean - span, mean + span)

    @property
    def latest_states(self) -> np.ndarray | None:
        """float32 ``(B, S)`` robot states of the most recent frame (state models), else None."""
        state = self._require_state()
        if state.states is None:
            return None
        span = self.STATE_SPAN
        return self.state_norm.unnormalize(state.states[:, -1].clamp(-span, span)).cpu().numpy()

    def _history_latents(self, frames) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` or ``(B, l, H, W, 3)`` -> normalised ``(B, history, L, D)``."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim not in (4, 5) or frames.shape[-1] != 3:
            raise ValueError(
                f"frames must be uint8 (B, H, W, 3) or (B, l, H, W, 3); got {frames.dtype} {frames.shape}"
            )
        if frames.ndim == 4:
            frames = frames[:, None]
        batch, given = frames.shape[:2]
        if given == 0 or batch == 0:
            raise ValueError(
                f"reset needs at least one start frame per episode; got shape {frames.shape}"
            )
        frames = frames[:, -self.history :]
        if given < self.history:  # too short a history: repeat the first frame
            frames = np.concatenate(
                [np.repeat(frames[:, :1], self.history - given, axis=1), frames], axis=1
            )
        flat = frames.reshape(-1, *frames.shape[2:])
        return self.encode(flat).reshape(batch, self.history, *self.latent_shape)

    def _generator_states(self, seeds, batch: int) -> list[torch.Tensor]:
        if seeds is None:
            seeds = torch.randint(0, 2**31 - 1, (batch,)).tolist()
        elif np.isscalar(seeds):
            seeds = [int(seeds) + i for i in range(batch)]  # episode i of a batch: seed + i
        seeds = [int(x) for x in seeds]
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for {batch} episodes")
        return [torch.Generator().manual_seed(x).get_state() for x in seeds]

    @torch.no_grad()
    def reset(
        self,
        frames,
        instruction: str | list[str] | None = None,
        seed: int | list[int] | None = None,
        states=None,
    ) -> np.ndarray:
        """Start episodes from frames: ``(B, H, W, 3)`` or ``(B, l, H, W, 3)`` uint8 history.

        With fewer than ``history`` frames the first is repeated. ``seed`` is one int (episode
        ``i`` then uses ``seed + i``) or one seed per episode: each episode draws its noise from
        its own generator, so an episode's frames do not depend on the rest of the batch.
        Returns the last start frame as the episode shows it, uint8 ``(B, H, W, 3)``: the frame
        itself with residual decoding, else its latents decoded. ``instruction`` is accepted
        for API symmetry: the dynamics are action-conditioned, not language-conditioned.
        ``states``: the robot's start state, float ``(B, S)`` or ``(B, l, S)``; required by
        models that condition on it (:attr:`uses_states`), ignored by the others.
        """
        latents = self._history_latents(frames)
        batch = latents.shape[0]
        conditions = self.null_conditions(batch, self.history)
        history_states = self._history_states(states, batch)
        shown, residual = self._start_frames(frames, latents[:, -1])
        self._state = WorldModelState(
            latents,
            conditions,
            self._generator_states(seed, batch),
            0,
            residual,
            history_states,
            latents[:, 0].clone() if self.anchored else None,
        )
        return shown

    @torch.no_grad()
    def reset_subset(
        self, indices, frames, seed: int | list[int] | None = None, states=None
    ) -> np.ndarray:
        """Restart only episodes ``indices`` (e.g. those a vector env autoresets).

        The others keep their state exactly.
        """
        state = self._require_state()
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.device)
        latents = self._history_latents(frames)
        if latents.shape[0] != len(index):
            raise ValueError(f"{len(index)} indices but {latents.shape[0]} start frames")
        history_states = self._history_states(states, len(index))
        if history_states is not None:
            state.states = state.states.index_copy(0, index, history_states)
        conditions = self.null_conditions(len(index), self.history)
        state.context = state.context.index_copy(0, index, latents)
        if state.anchor is not None:
            state.anchor = state.anchor.index_copy(0, index, latents[:, 0])
        state.context_actions = state.context_actions.index_copy(0, index, conditions)
        for i, g in zip(index.tolist(), self._generator_states(seed, len(index)), strict=True):
            state.generator_states[i] = g
        shown, residual = self._start_frames(frames, latents[:, -1])
        if residual is not None:
            state.residual = state.residual.index_copy(0, index, residual)
        return shown

    @torch.no_grad()
    def step(self, actions, decode: bool = True) -> np.ndarray | None:
        """Advance every episode by one env step.

        Args:
            actions: float ``(B, 7)`` (or ``(B, frame_skip, 7)``) env actions.
            decode: decode the new frames to pixels; planners that only read
                :attr:`latest_latents` pass False and skip the decoder.
        Returns:
            uint8 ``(B, H, W, 3)`` predicted frames (None when ``decode`` is False).
        """
        state = self._require_state()
        actions = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.device)
        batch = state.context.shape[0]
        if actions.ndim == 2:
            actions = actions[:, None]
        if actions.shape != (batch, self.frame_skip, ACTION_DIM):
            raise ValueError(
                f"actions must be ({batch}, {ACTION_DIM}) (or ({batch}, {self.frame_skip}, {ACTION_DIM})); got {tuple(actions.shape)}"
            )
        if not torch.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf")
        start = time.perf_counter()
        condition = normalize_actions(actions, self.action_stats, self.frame_skip)[
            :, None
        ]  # (B, 1, A)
        with self._autocast():
            next_states = self._next_states(state, condition[:, 0])  # (B, S) or None
            if next_states is not None:  # the frame is drawn where the state puts the arm
                condition = torch.cat([condition, next_states[:, None].to(condition.dtype)], 2)
            sample = self._sample(state, condition)
            mean_head = getattr(self.dit, "mean_head", None)
            if mean_head is not None:  # the flow sampled the residual around this mean
                sample = sample + mean_head(state.context, condition[:, 0], state.anchor)[:, None]
        new = sample[:, 0].float()  # (B, L, D)
        if not torch.isfinite(new).all():  # never black frames in silence
            bad = torch.nonzero(~torch.isfinite(new).flatten(1).all(1)).flatten().tolist()
            raise FloatingPointError(
                f"the world model produced NaN or inf latents in episodes {bad} of the batch "
                f"(step {state.steps + 1}); the bundle {self.bundle} or its inputs are broken"
            )
        if self.target == "delta":
            new = state.context[:, -1] + new * (self.delta_std / self.latent_std)
        state.context = torch.cat([state.context[:, 1:], new[:, None]], dim=1)
        state.context_actions = torch.cat(
            [state.context_actions[:, 1:], condition[..., : state.context_actions.shape[2]]], dim=1
        )
        if next_states is not None:
            state.states = torch.cat([state.states[:, 1:], next_states[:, None].float()], dim=1)
        state.steps += 1
        frames = self.decode(new, state.residual) if decode else None
        self.last_step_seconds = time.perf_counter() - start
        return frames

    def _next_states(self, state: WorldModelState, action: torch.Tensor) -> torch.Tensor | None:
        """The state head's next normalised states ``(B, S)`` (None for models without states)."""
        if state.states is None:
            return None
        actions = torch.cat([state.context_actions, action[:, None]], dim=1)  # (B, l + 1, A)
        change = self.dit.state_head(state.states, actions).float()  # (B, S) in delta units
        next_states = state.states[:, -1] + change * self.state_norm.delta_scale()
        return next_states.clamp(-self.STATE_SPAN, self.STATE_SPAN)  # inside state_space()

    def _sample(self, state: WorldModelState, condition: torch.Tensor) -> torch.Tensor:
        """One new frame ``(B, 1, L, D)``; episode ``i`` draws its noise from its own generator.

        The DiT was trained on clips of ``history`` context frames and one target, so the new
        frame attends to the last ``history`` frames, and those frames to each other causally,
        as in a training clip. With ``use_cache`` the context's per-layer keys and values are
        computed once here (one pass over ``history`` frames) and read by every denoising step;
        without it every denoising step recomputes them. Both give the same frames. A cache kept
        across steps with a sliding window would not: a context frame's keys at layer ``l``
        would hold what that frame saw when it was appended, so information from frames up to
        ``l * history`` steps back leaks in through deeper layers (banded attention), which
        training never showed the model (measured on models/default, 6 layers: latents 0.12
        apart within 20 steps, frames up to 18 grey levels).
        """
        from wm_env.model.flow import sample_next_frame

        noise = []
        for i, generator_state in enumerate(state.generator_states):
            generator = torch.Generator().set_state(generator_state)
            noise.append(torch.randn(1, 1, *self.latent_shape, generator=generator))
            state.generator_states[i] = generator.get_state()
        noise = torch.cat(noise).to(self.device) * self.temperature  # (B, 1, L, D)
        common = {"num_steps": self.num_steps, "noise": noise}
        context_conditions = state.context_actions  # (B, history, A)
        if state.states is not None:  # each context frame's condition ends with its state
            context_conditions = torch.cat([context_conditions, state.states], dim=2)
        conditions = torch.cat([context_conditions, condition], dim=1)
        if self.use_cache:
            common["cache"] = self.dit.new_cache(window=self.history)
            common["update_cache"] = False
        return sample_next_frame(self.dit, self.scheduler, state.context, conditions, **common)

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def latest_latents(self) -> torch.Tensor:
        """Normalised latents ``(B, L, D)`` of the most recent frame."""
        return self._require_state().context[:, -1]

    def _require_state(self) -> WorldModelState:
        if self._state is None:
            raise RuntimeError("call reset(frames) before step(actions)")
        return self._state

    # ------------------------------------------------------------------ branching
    def snapshot(self) -> WorldModelState:
        """A copy of the current state; :meth:`restore` returns to it."""
        return self._require_state().clone()

    def restore(self, state: WorldModelState) -> None:
        """Return to a :meth:`snapshot` (the snapshot itself stays reusable)."""
        self._state = state.clone()
