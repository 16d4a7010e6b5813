"""``wmgym train decoder``: the pixel decoder on frozen (adapter) latents, into a bundle.

Needed for encoders without a decoder of their own (the semantic ones); it sees detached
latents, so nothing upstream changes. With ``--name`` it trains an alternative decoder that the
runtime uses only when asked (``decoder=<name>``), e.g. a lighter one for fast rollouts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from train.latent_cache import cached_episode_latents
from train.loop import (
    OptimConfig,
    RuntimeConfig,
    Trainer,
    batch_rng,
    config_dict,
    pin_run_inputs,
)
from train.stage_dynamics import encode_frames
from wm_env.bundle import (
    ENCODER_DECODER,
    decoder_section,
    json_ready,
    latent_space_hashes,
    read_config,
    write_component,
)
from wm_env.dataset.split import DataConfig, load_split
from wm_env.world_model import build_adapter_from_config, build_encoder_from_config


@dataclass(frozen=True)
class DecoderStageConfig:
    """Train a pixel decoder from the bundle's latents (encoder + adapter, frozen) to frames.

    Attributes:
        bundle: the model bundle directory (encoder, and adapter if any, must exist).
        name: empty for the bundle's default decoder (section ``decoder``, which replaces the
            encoder's own); a name for an alternative one (section ``decoder_<name>``, used with
            ``WorldModel.from_pretrained(bundle, decoder=<name>)``).
        base_channels: decoder width.
        perceptual: ``stlpips`` (offline ST-LPIPS weights) or ``none``.
        perceptual_weight: weight of the perceptual term next to L1.
        run_dir: checkpoints, latent cache, loss log (default ``runs/<bundle>/decoder``).
    """

    bundle: Path = Path("models/default")
    data: DataConfig = field(default_factory=DataConfig)
    name: str = ""
    base_channels: int = 32
    perceptual: str = "stlpips"
    perceptual_weight: float = 0.5
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=3000, batch_size=16, lr=3e-4, warmup_steps=100, ema_decay=0.999
        )
    )
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    run_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.name and not self.name.replace("_", "").isalnum():
            raise ValueError(f"decoder name must be letters, digits and '_'; got {self.name!r}")
        if self.name == ENCODER_DECODER:
            raise ValueError(f"{ENCODER_DECODER!r} names the encoder's own decoder; pick another")

    @property
    def section(self) -> str:
        """The bundle section (and weight file stem) the decoder is written to."""
        return decoder_section(self.name or None)

    def resolved_run_dir(self) -> Path:
        return self.run_dir or Path("runs") / self.bundle.name / self.section


def run_decoder_stage(config: DecoderStageConfig, progress: bool = True) -> Path:
    """Train the pixel decoder; write ``<section>.safetensors`` and its config section."""
    from train.perceptual import build_perceptual
    from wm_env.model.decoder import PixelDecoder, PixelDecoderConfig, decoder_loss

    device = torch.device(config.runtime.device)
    bundle_config = read_config(config.bundle)
    encoder = build_encoder_from_config(bundle_config, config.bundle, device)
    adapter = build_adapter_from_config(bundle_config, config.bundle, device)
    dataset, train, _ = load_split(config.data, progress)
    frames = train["frames"]  # (N, H, W, 3) uint8
    weights = latent_space_hashes(bundle_config)  # sections alone do not pin the weights
    latents = cached_episode_latents(
        config.resolved_run_dir() / "latents.safetensors",
        f"{bundle_config['encoder']}|{bundle_config.get('adapter')}|{weights}",
        train,
        lambda frames: encode_frames(encoder, adapter, frames, progress=progress),
    ).to(device)
    h, w = bundle_config["encoder"]["grid"]
    levels = int(np.log2(frames.shape[1] // h))
    decoder_config = PixelDecoderConfig(
        latent_dim=latents.shape[-1],
        grid=(h, w),
        base_channels=config.base_channels,
        channel_multipliers=tuple([4, 2] + [1] * (levels - 1))[: levels + 1],
    )
    if decoder_config.image_size != tuple(frames.shape[1:3]):
        raise ValueError(
            f"decoder output {decoder_config.image_size} != frame size {frames.shape[1:3]}: the grid must divide the frames by a power of two"
        )
    decoder = PixelDecoder(decoder_config)
    perceptual = build_perceptual(None if config.perceptual == "none" else config.perceptual)
    if perceptual is not None:
        perceptual = perceptual.to(device)

    def loss_fn(model, step: int):
        rng = batch_rng(config.runtime, step)
        idx = rng.integers(0, len(frames), config.optim.batch_size)
        target = torch.from_numpy(frames[idx]).to(device)
        terms = decoder_loss(
            model(latents[torch.as_tensor(idx, device=device)]),
            target,
            perceptual,
            config.perceptual_weight,
        )
        return terms["loss"], {k: float(v) for k, v in terms.items() if k != "loss"}

    trainer = Trainer(
        decoder,
        loss_fn,
        config.resolved_run_dir(),
        config.optim,
        config.runtime,
        run_config=config_dict(config),
    )
    pin_run_inputs(trainer, weights)
    trained = trainer.fit(progress)
    section = {
        "config": json_ready(dataclasses.asdict(decoder_config)),
        "steps": trainer.state.step,
    }
    write_component(config.bundle, config.section, section, trained.state_dict())
    return config.bundle
