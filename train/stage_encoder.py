"""``wmgym train encoder``: train the from-scratch VAE (the CPU default latent space) into a bundle.

Frozen pretrained encoders (SigLIP 2, DINOv2, V-JEPA 2, ImageNet) need no training: register
them in a bundle with ``--encoder NAME --path DIR`` (``steps`` is then ignored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from train.loop import OptimConfig, RuntimeConfig, Trainer, batch_rng, config_dict
from wm_env.bundle import json_ready, write_component
from wm_env.dataset.split import DataConfig, dataset_fingerprint, load_split


@dataclass(frozen=True)
class EncoderStageConfig:
    """Train (or register) the image encoder of a world-model bundle.

    Attributes:
        bundle: the model bundle directory to write ``encoder.safetensors`` into.
        encoder: ``vae`` (trained here from scratch unless ``path`` is given), or a frozen
            pretrained encoder: ``siglip2``, ``dinov2``, ``vjepa2``, ``imagenet``, or ``jepa``
            (pretrained here by ``wmgym train jepa``; its weights are copied into the bundle).
        path: local directory of pretrained weights (``vae``, ``siglip2``, ``dinov2``,
            ``vjepa2``, ``jepa``).
        image_size: frames are resized to this square size.
        latent_channels: VAE latent channels.
        downsample: VAE spatial downsampling (64 / 8 = an 8x8 latent grid).
        base_channels: VAE width.
        kl_weight: VAE KL weight (LDM convention).
        perceptual: ``stlpips`` for an ST-LPIPS term (offline weights), or ``none``.
        run_dir: checkpoints and loss log (default ``runs/<bundle name>/encoder``).
    """

    bundle: Path = Path("models/default")
    data: DataConfig = field(default_factory=DataConfig)
    encoder: str = "vae"
    path: Path | None = None
    image_size: int = 64
    latent_channels: int = 8
    downsample: int = 8
    base_channels: int = 32
    kl_weight: float = 1e-6
    perceptual: str = "none"
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=3000, batch_size=32, lr=1e-3, warmup_steps=100, min_lr_ratio=0.1, ema_decay=0.999
        )
    )
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    run_dir: Path | None = None

    def resolved_run_dir(self) -> Path:
        return self.run_dir or Path("runs") / self.bundle.name / "encoder"


def encoder_section(encoder, name: str, options: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The bundle's ``encoder`` section for a built encoder."""
    section = {
        "name": name,
        "options": options,
        "image_size": image_size,
        "latent_dim": encoder.latent_dim,
        "grid": list(encoder.grid),
        "has_decoder": encoder.has_decoder,
    }
    if name == "vae" and "path" not in options:
        section["vae_config"] = dict(encoder.vae.config)
    return json_ready(section)


def run_encoder_stage(config: EncoderStageConfig, progress: bool = True) -> Path:
    """Train or register the encoder; return the bundle directory."""
    from wm_env.model.encoders import build_encoder, small_vae_config, vae_loss

    if config.encoder == "jepa":  # pretrained here: its weights go into the bundle
        from dataclasses import asdict

        if config.path is None:
            raise ValueError("--encoder jepa needs --path: a `wmgym train jepa` encoder directory")
        encoder = build_encoder("jepa", path=str(config.path))
        section = encoder_section(encoder, "jepa", {}, encoder.config.image_size)
        section["jepa_config"] = asdict(encoder.config)
        section["pretrained_from"] = str(config.path)
        write_component(config.bundle, "encoder", section, encoder.state_dict())
        return config.bundle
    if config.encoder != "vae" or config.path is not None:
        options = {"path": str(config.path)} if config.path is not None else {}
        if config.encoder == "vae":
            options["image_size"] = config.image_size
        encoder = build_encoder(config.encoder, **options)
        write_component(
            config.bundle,
            "encoder",
            encoder_section(encoder, config.encoder, options, config.image_size),
        )
        return config.bundle

    vae_config = small_vae_config(
        config.image_size, config.latent_channels, config.downsample, config.base_channels
    )
    encoder = build_encoder("vae", config=vae_config, image_size=config.image_size)
    dataset, train, _ = load_split(config.data, progress)
    frames = train["frames"]  # (N, H, W, 3) uint8
    perceptual = None
    if config.perceptual != "none":
        from train.perceptual import build_perceptual

        perceptual = build_perceptual(config.perceptual).to(config.runtime.device)
    batch = config.optim.batch_size

    def loss_fn(model, step: int):
        rng = batch_rng(config.runtime, step)
        images = torch.from_numpy(frames[rng.integers(0, len(frames), batch)]).to(
            config.runtime.device
        )
        terms = vae_loss(model, images, kl_weight=config.kl_weight, perceptual=perceptual)
        return terms["loss"], {k: float(v) for k, v in terms.items() if k != "loss"}

    trainer = Trainer(
        encoder,
        loss_fn,
        config.resolved_run_dir(),
        config.optim,
        config.runtime,
        run_config=config_dict(config),
    )
    trained = trainer.fit(progress)
    trained.freeze()
    section = encoder_section(trained, "vae", {}, config.image_size)
    section["dataset"] = dataset_fingerprint(dataset)
    section["steps"] = trainer.state.step
    write_component(config.bundle, "encoder", section, trained.state_dict())
    return config.bundle
