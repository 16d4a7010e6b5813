"""One training loop for every stage: optimizer, schedule, EMA, AMP, checkpoints, logs.

A stage supplies a model and a ``loss_fn(model, step) -> (loss, {name: value})``; the loop does
the rest: AdamW with warmup then cosine decay, gradient clipping, an EMA copy of the weights,
optional autocast (bf16 on GPUs) and ``torch.compile``, a CSV loss log (and TensorBoard when
installed and asked for), a progress bar, and resumable checkpoints written atomically in
safetensors (weights) + JSON (step, RNG, optimizer via ``torch.save`` of tensors only, loaded
with ``weights_only=True``).

DDP: launch with ``torchrun``; the loop wraps the model in DistributedDataParallel when
``torch.distributed`` is initialised (WORLD_SIZE > 1) and only rank 0 writes logs/checkpoints.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import pickle
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_EMA = "checkpoint_ema.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_STATE = "checkpoint.json"
LOSS_LOG = "loss.csv"


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation settings shared by every stage (RECIPE defaults for the DiT).

    Attributes:
        steps: total optimisation steps.
        batch_size: clips (or images) per step.
        lr: peak learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        min_lr_ratio: the cosine decays to this fraction of ``lr``.
        grad_clip: max gradient norm (0 disables).
        ema_decay: EMA decay of the weights (0 disables).
        checkpoint_every: steps between checkpoints.
        log_every: steps between loss-log rows.
        seconds: stop after this many seconds of training (0: no limit); resumable.
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.7
    grad_clip: float = 1.0
    ema_decay: float = 0.9995
    checkpoint_every: int = 200
    log_every: int = 10
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"steps and batch_size must be >= 1; got {self.steps}, {self.batch_size}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number; got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1); got {self.ema_decay}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                f"bad schedule: warmup_steps={self.warmup_steps}, min_lr_ratio={self.min_lr_ratio}"
            )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how to run.

    Attributes:
        device: torch device string (``cpu``, ``cuda``, ``cuda:1``...).
        amp: autocast dtype for the forward pass: ``none`` or ``bf16`` (GPUs; bf16 is very
            slow on CPUs without AMX) or ``fp16``.
        compile: wrap the model in ``torch.compile``.
        tensorboard: also log to TensorBoard (needs the ``tensorboard`` package).
        seed: seed of the data order and noise.
        threads: torch CPU threads (0: torch's default).
    """

    device: str = "cpu"
    amp: str = "none"
    compile: bool = False
    tensorboard: bool = False
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be one of none, bf16, fp16; got {self.amp!r}")

    def autocast(self, device: torch.device):
        """The autocast context of this config (a no-op for ``amp="none"``)."""
        if self.amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)


def init_distributed(runtime: RuntimeConfig) -> int:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE > 1); return this rank.

    NCCL on CUDA devices, Gloo on CPUs. Without torchrun this does nothing and returns 0.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if runtime.device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def batch_rng(runtime: RuntimeConfig, step: int) -> np.random.Generator:
    """The generator a stage draws step ``step``'s batch from: a function of (seed, rank, step),
    so resumed runs see the same batches and DDP ranks see different ones."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return np.random.default_rng((runtime.seed, rank, step))


def lr_at(step: int, config: OptimConfig) -> float:
    """Learning rate at ``step``: linear warm-up, then cosine from ``lr`` to ``min_lr_ratio * lr``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def is_main_process() -> bool:
    """Whether this process writes files (rank 0 of a DDP run, or the only process)."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


@dataclass
class TrainState:
    """What a checkpoint restores besides weights."""

    step: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Runs ``loss_fn`` for ``optim.steps`` steps on ``model``, checkpointing into ``out``.

    Args:
        model: the module to train (its trainable parameters are optimised).
        loss_fn: ``loss_fn(model, step) -> (scalar loss, {name: float})``; it draws its own batch.
        out: run directory (checkpoints, ``loss.csv``); an existing checkpoint there is resumed.
        optim, runtime: configs.
        run_config: JSON-able dict stored with checkpoints; resuming with a different one fails.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, int], tuple[torch.Tensor, dict[str, float]]],
        out: str | os.PathLike,
        optim: OptimConfig,
        runtime: RuntimeConfig,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.out = Path(out)
        self.optim_config, self.runtime = optim, runtime
        self.rank = init_distributed(runtime)
        self.device = torch.device(runtime.device)
        if runtime.threads:
            torch.set_num_threads(runtime.threads)
        self.model = model.to(self.device)
        self.ema = (
            copy.deepcopy(self.model).eval().requires_grad_(False) if optim.ema_decay > 0 else None
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay
        )
        self.loss_fn = loss_fn
        self.run_config = json.loads(json.dumps(run_config or {}, default=str))
        self.state = TrainState()
        self.resume()
        self._train_model: nn.Module = self.model
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if runtime.compile:
            self._train_model = torch.compile(self._train_model)

    # ------------------------------------------------------------------ checkpoints
    def resume(self) -> bool:
        """Load the checkpoint in ``out`` if there is one; return whether it did."""
        state_path = self.out / CHECKPOINT_STATE
        if not state_path.exists():
            return False
        from wm_env.errors import CorruptFileError

        try:
            saved = json.loads(state_path.read_text())
        except json.JSONDecodeError as error:
            raise CorruptFileError(state_path, f"not valid JSON ({error})") from None
        if _identity(saved.get("run_config")) != _identity(self.run_config):
            raise ValueError(
                f"{self.out} holds a run with a different configuration; use a new --out or the same settings.\n"
                f"stored: {saved.get('run_config')}\nnow:    {self.run_config}"
            )
        self.model.load_state_dict(_load_safetensors(self.out / CHECKPOINT_WEIGHTS, self.device))
        if self.ema is not None:
            self.ema.load_state_dict(_load_safetensors(self.out / CHECKPOINT_EMA, self.device))
        optimizer_path = self.out / CHECKPOINT_OPTIMIZER
        try:
            self.optimizer.load_state_dict(
                torch.load(optimizer_path, map_location=self.device, weights_only=True)
            )
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            raise CorruptFileError(
                optimizer_path, f"cannot load optimizer state ({error})"
            ) from None
        self.state = TrainState(
            step=saved["step"], seconds=saved["seconds"], extra=saved.get("extra", {})
        )
        torch.set_rng_state(torch.tensor(saved["torch_rng"], dtype=torch.uint8))
        return True

    def checkpoint(self) -> None:
        """Write weights, EMA weights, optimizer state and the step counter atomically."""
        if not is_main_process():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write(self.out / CHECKPOINT_WEIGHTS, lambda p: save_file(cpu_state(self.model), p))
        if self.ema is not None:
            atomic_write(self.out / CHECKPOINT_EMA, lambda p: save_file(cpu_state(self.ema), p))
        atomic_write(
            self.out / CHECKPOINT_OPTIMIZER, lambda p: torch.save(self.optimizer.state_dict(), p)
        )
        state = {
            "step": self.state.step,
            "seconds": self.state.seconds,
            "extra": self.state.extra,
            "torch_rng": torch.get_rng_state().tolist(),
            "run_config": self.run_config,
        }
        atomic_write(self.out / CHECKPOINT_STATE, lambda p: Path(p).write_text(json.dumps(state)))

    # ------------------------------------------------------------------ training
    @property
    def done(self) -> bool:
        return self.state.step >= self.optim_config.steps

    def fit(self, progress: bool = True) -> nn.Module:
        """Train until ``optim.steps`` (or the time budget); return the EMA (or raw) model."""
        config = self.optim_config
        log = _LossLog(self.out / LOSS_LOG, self.runtime.tensorboard) if is_main_process() else None
        bar = tqdm(
            total=config.steps, initial=self.state.step, desc=self.out.name, disable=not progress
        )
        self.model.train()
        started = time.perf_counter()
        seconds_at_start = self.state.seconds
        while not self.done:
            step = self.state.step
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            with self.runtime.autocast(self.device):
                loss, terms = self.loss_fn(self._train_model, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at step {step}; lower the lr or check the data"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                terms["grad_norm"] = float(
                    nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                )
            self.optimizer.step()
            self._update_ema(step)
            self.state.step += 1
            self.state.seconds = seconds_at_start + time.perf_counter() - started
            terms = {"loss": loss.item(), **terms}
            if log is not None and (step % config.log_every == 0 or self.done):
                log.write(step, lr_at(step, config), self.state.seconds, terms)
            bar.update()
            bar.set_postfix(loss=f"{terms['loss']:.4f}")
            if self.state.step % config.checkpoint_every == 0 or self.done:
                self.checkpoint()
            if config.seconds and self.state.seconds >= config.seconds:
                break
        if not self.done or self.state.step % config.checkpoint_every:
            self.checkpoint()
        bar.close()
        if log is not None:
            log.close()
        self.model.eval()
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        if self.ema is None:
            return
        decay = min(self.optim_config.ema_decay, (1 + step) / (10 + step))  # fast start
        for ema_param, param in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            ema_param.lerp_(param.detach(), 1 - decay)
        for ema_buffer, buffer in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            ema_buffer.copy_(buffer)


class _LossLog:
    """Appends rows to ``loss.csv`` (header from the first row's keys); optional TensorBoard."""

    def __init__(self, path: Path, tensorboard: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fields: list[str] | None = None
        if path.exists() and path.stat().st_size:
            with path.open() as f:
                self.fields = next(csv.reader(f), None)
        self.writer_tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ImportError("tensorboard logging needs `pip install tensorboard`") from error
            self.writer_tb = SummaryWriter(str(path.parent / "tensorboard"))

    def write(self, step: int, lr: float, seconds: float, terms: dict[str, float]) -> None:
        row = {"step": step, "lr": lr, "seconds": round(seconds, 3), **terms}
        if self.fields is None:
            self.fields = list(row)
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.fields)
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])
        if self.writer_tb is not None:
            for name, value in terms.items():
                self.writer_tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer_tb is not None:
            self.writer_tb.close()


# Settings a run may resume with other values of: the time budget and logging cadence, and the
# sampling settings a dynamics run only stores in its bundle (``num_steps``, ``temperature``),
# so re-running a finished run with other ones rewrites the bundle without retraining.
RUN_CONTROL_KEYS = frozenset(
    {
        "seconds",
        "threads",
        "tensorboard",
        "checkpoint_every",
        "log_every",
        "val_every",
        "num_steps",
        "temperature",
    }
)


def _identity(run_config: Any) -> Any:
    """A run config without its run-control knobs (time budget, threads, logging cadence):
    a run may resume with other values of those, not with other model or data settings."""
    if isinstance(run_config, dict):
        return {k: _identity(v) for k, v in run_config.items() if k not in RUN_CONTROL_KEYS}
    return run_config


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict as contiguous CPU tensors (ready for safetensors)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _load_safetensors(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    from wm_env.errors import CorruptFileError

    if not path.exists():
        raise CorruptFileError(path, "missing (the checkpoint is incomplete)")
    try:
        return load_file(str(path), device=str(device))
    except Exception as error:  # safetensors raises SafetensorError on truncation
        raise CorruptFileError(path, f"cannot read safetensors ({error})") from None


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(str(tmp))
    os.replace(tmp, path)


def pin_run_inputs(trainer: Trainer, inputs: Any) -> None:
    """Refuse to resume a run that was trained on other ``inputs``, and record them for later.

    ``inputs`` (JSON-able) is what a stage's data comes from besides its settings, e.g. the
    hashes of the frozen encoder/adapter weights its latents are computed with: ``run_config``
    cannot see a retrained encoder, so without this a re-run would resume (or return) the old
    model. Runs checkpointed before inputs were recorded resume as before.
    """
    inputs = json.loads(json.dumps(inputs, default=str))
    stored = trainer.state.extra.get("inputs")
    if stored is not None and stored != inputs:
        raise ValueError(
            f"{trainer.out} holds a run trained on other inputs (the bundle's encoder or adapter "
            f"weights changed since); use a new run directory to train on the new ones.\n"
            f"stored: {stored}\nnow:    {inputs}"
        )
    trainer.state.extra["inputs"] = inputs


def config_dict(*configs: Any) -> dict[str, Any]:
    """Merge dataclass configs into one JSON-able dict (for ``run_config``)."""
    merged: dict[str, Any] = {}
    for config in configs:
        merged[type(config).__name__] = json.loads(json.dumps(asdict(config), default=str))
    return merged
