"""``wmgym train adapter``: the S-VAE (or MLP) adapter on frozen encoder features, into a bundle."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
from wm_env.bundle import read_config, write_component
from wm_env.dataset.split import DataConfig, load_split
from wm_env.world_model import build_encoder_from_config


@dataclass(frozen=True)
class AdapterStageConfig:
    """Train an adapter from the bundle's (frozen) encoder features to compact latents.

    Attributes:
        bundle: the model bundle directory (its encoder must exist).
        adapter: ``svae`` (transformer VAE, KL-regularised), ``mlp`` or ``identity``.
        latent_dim: adapter latent width (the paper's S-VAE: 96).
        tokens_per_batch: tokens per step are ``batch_size`` frames x all their tokens.
        run_dir: checkpoints, feature cache, loss log (default ``runs/<bundle>/adapter``).
    """

    bundle: Path = Path("models/default")
    data: DataConfig = field(default_factory=DataConfig)
    adapter: str = "svae"
    latent_dim: int = 96
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=2000, batch_size=8, lr=1e-4, warmup_steps=100, ema_decay=0.0
        )
    )
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    run_dir: Path | None = None

    def resolved_run_dir(self) -> Path:
        return self.run_dir or Path("runs") / self.bundle.name / "adapter"


def run_adapter_stage(config: AdapterStageConfig, progress: bool = True) -> Path:
    """Train the adapter on cached encoder features; write ``adapter.safetensors``."""
    from wm_env.model.adapters import IdentityAdapter, build_adapter

    device = torch.device(config.runtime.device)
    bundle_config = read_config(config.bundle)
    if "encoder" not in bundle_config:
        raise ValueError(f"{config.bundle} has no encoder yet: run `wmgym train encoder` first")
    encoder = build_encoder_from_config(bundle_config, config.bundle, device)
    in_dim = encoder.latent_dim
    options = {} if config.adapter == "identity" else {"latent_dim": config.latent_dim}
    adapter = build_adapter(config.adapter, in_dim, **options)
    if config.adapter == "identity":
        write_component(config.bundle, "adapter", {"name": "identity", "options": {}})
        return config.bundle
    dataset, train, _ = load_split(config.data, progress)
    weights = [  # the section does not pin the weights (e.g. a retrain with another lr)
        bundle_config["files"][f]["sha256"]
        for f in sorted(bundle_config["files"])
        if f.split(".")[0] == "encoder"
    ]
    features = cached_episode_latents(
        config.resolved_run_dir() / "features.safetensors",
        f"{bundle_config['encoder']}|{weights}|features",
        train,
        lambda frames: encode_frames(encoder, IdentityAdapter(in_dim), frames, progress=progress),
    )
    features = features.to(device)  # (N, L, D_in)
    total = config.optim.steps

    def loss_fn(model, step: int):
        rng = batch_rng(config.runtime, step)
        batch = features[
            torch.as_tensor(rng.integers(0, len(features), config.optim.batch_size), device=device)
        ]
        terms = model.loss(batch, step, total)
        return terms["loss"], {k: float(v) for k, v in terms.items() if k != "loss"}

    trainer = Trainer(
        adapter,
        loss_fn,
        config.resolved_run_dir(),
        config.optim,
        config.runtime,
        run_config=config_dict(config),
    )
    pin_run_inputs(trainer, weights)
    trained = trainer.fit(progress)
    write_component(
        config.bundle,
        "adapter",
        {"name": config.adapter, "options": options, "steps": trainer.state.step},
        trained.state_dict(),
    )
    return config.bundle
