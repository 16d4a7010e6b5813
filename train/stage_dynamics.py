"""``wmgym train dynamics``: the DiT transition model over cached latents, into a bundle.

Frames are encoded once (encoder + adapter of the bundle, frozen) and cached on disk; batches of
clips are gathered from the cached latents with vectorised indexing, so the time goes to the DiT.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from train.clips import ClipIndex
from train.loop import (
    OptimConfig,
    RuntimeConfig,
    Trainer,
    atomic_write,
    batch_rng,
    config_dict,
    cpu_state,
    is_main_process,
    pin_run_inputs,
)
from wm_env.bundle import (
    bundle_sha256,
    json_ready,
    latent_space_hashes,
    load_weights,
    read_config,
    update_config,
    write_component,
)
from wm_env.dataset.split import DataConfig
from wm_env.world_model import condition_dim, normalize_actions

TARGETS = ("frame", "delta")
VAL_CLIPS = 256  # held-out clips in the fixed validation batch
VAL_SEED_STEP = 10**9  # the validation batch's noise: the same at every evaluation


@dataclass(frozen=True)
class DynamicsStageConfig:
    """Train the DiT transition model of a bundle (its encoder must exist already).

    Attributes:
        bundle: the model bundle directory (``wmgym train encoder`` wrote its encoder).
        preset: DiT size preset (tiny, S, B, L, XL); hidden/depth/heads override it.
        patch_size: tokens per side merged into one DiT token.
        history: context frames ``l``.
        future: frames predicted per clip in training (``delta`` needs 1).
        frame_skip: dataset steps between world-model frames (actions in between are stacked).
        target: ``frame`` (generate the next latents) or ``delta`` (the change from the last).
        objective: ``flow`` (flow matching, logit-normal times with the dimension shift) or
            ``ddpm`` (v-prediction, sigmoid betas).
        shift: flow time shift; 0 = the dimension-dependent default sqrt(m / 4096).
        num_steps: denoising steps at sampling time (stored in the bundle).
        temperature: scale of the starting noise at sampling time (stored in the bundle; 0 =
            deterministic, 1 = the learned distribution).
        action_dropout: share of samples trained with the null action (classifier-free guidance).
        mean_head_width: hidden channels of the convolutional mean head (``wm_env/model/mean_head.py``)
            trained jointly by MSE to predict the next frame's target; the flow learns the
            residual. 0 disables it (the flow models the whole target). Needs ``future=1``.
        mean_head_depth: its residual blocks.
        mean_head_unroll: frames the mean head is trained to roll out on its own predictions
            (1: one step from true frames). Each further step starts from the previous step's
            prediction, detached (the "pushforward" trick), so the head learns to correct the
            drift it causes in long rollouts.
        mean_head_context_noise: standard deviation of Gaussian noise added to the mean head's
            context frames in training (normalised latent units): it learns to predict from
            slightly wrong frames, as in its own rollouts, and overfits the training episodes
            less. 0 disables it.
        mean_head_anchor: the mean head also reads the episode's first frame, so that what
            the arm hid or did not touch can be copied from it (``wm_env/model/mean_head.py``). Rollouts
            anchor on the first start frame given to ``reset``.
        val_every: log the loss on a fixed batch of held-out clips (``val_loss``, and
            ``val_mean_loss`` with the mean head) every this many steps, a multiple of
            ``optim.log_every``; 0 disables it. It is measured on the EMA weights (the ones
            written to the bundle) when ``optim.ema_decay > 0``.
        keep_best: write the weights with the lowest ``val_loss`` seen (early stopping) to the
            bundle instead of the last ones; needs ``val_every``. They are kept in the run
            directory (``best.safetensors``) as training goes, so a resumed run keeps them.
        init_from: a bundle whose dynamics weights start this run (fine-tuning, e.g. a longer
            ``mean_head_unroll`` on a trained model). Its DiT settings and latent space must
            match this run's; its latent statistics are kept (the weights were trained with
            them). The optimiser and learning-rate schedule start afresh.
        state: condition every frame on the robot's proprioceptive state (the dataset's
            ``observation.state``) and predict the next state with a small head
            (``wm_env/model/state_head.py``): the arm is drawn where the state says. Rollouts then need
            the start state (``WorldModel.reset(frames, states=...)``).
        state_noise: standard deviation of Gaussian noise (normalised state units) added in
            training to the states the frame model reads, as the predicted states it reads in
            rollouts are slightly off.
        packed: train from a packed-latents file (``wmgym train pack``) instead of encoding
            ``data``: no dataset, encoder, pandas or diffusers needed (a lent GPU machine).
        run_dir: checkpoints, latent cache, loss log (default ``runs/<bundle name>/dynamics``).
    """

    bundle: Path = Path("models/default")
    data: DataConfig = field(default_factory=DataConfig)
    preset: str = "tiny"
    hidden: int | None = None
    depth: int | None = None
    heads: int | None = None
    patch_size: int = 1
    history: int = 2
    future: int = 1
    frame_skip: int = 1
    target: str = "delta"
    objective: str = "flow"
    shift: float = 0.0
    num_steps: int = 10
    temperature: float = 1.0
    action_dropout: float = 0.1
    mean_head_width: int = 96
    mean_head_depth: int = 4
    mean_head_unroll: int = 1
    mean_head_context_noise: float = 0.0
    mean_head_anchor: bool = False
    val_every: int = 500
    keep_best: bool = False
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=20000,
            batch_size=32,
            lr=3e-4,
            warmup_steps=300,
            min_lr_ratio=0.1,
            ema_decay=0.999,
            checkpoint_every=500,
        )
    )
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    state: bool = False
    state_noise: float = 0.05
    init_from: Path | None = None
    packed: Path | None = None
    run_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}; got {self.target!r}")
        if self.target == "delta" and self.future != 1:
            raise ValueError("target='delta' predicts one frame at a time: set future=1")
        if self.history < 1 or self.future < 1 or self.frame_skip < 1:
            raise ValueError(
                f"history, future, frame_skip must be >= 1; got {self.history}, {self.future}, {self.frame_skip}"
            )
        if self.mean_head_anchor and not self.mean_head_width:
            raise ValueError("mean_head_anchor needs a mean head: set mean_head_width > 0")
        if self.mean_head_width and self.future != 1:
            raise ValueError("the mean head predicts one frame at a time: set future=1")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0; got {self.temperature}")
        if self.val_every < 0 or (self.val_every and self.val_every % self.optim.log_every):
            raise ValueError(
                f"val_every must be 0 or a multiple of optim.log_every ({self.optim.log_every}); "
                f"got {self.val_every}"
            )
        if self.mean_head_unroll < 1:
            raise ValueError(f"mean_head_unroll must be >= 1; got {self.mean_head_unroll}")
        if self.mean_head_context_noise < 0:
            raise ValueError(
                f"mean_head_context_noise must be >= 0; got {self.mean_head_context_noise}"
            )
        if self.state_noise < 0:
            raise ValueError(f"state_noise must be >= 0; got {self.state_noise}")
        if self.keep_best and not self.val_every:
            raise ValueError("keep_best picks weights by the held-out loss: set val_every > 0")

    def resolved_run_dir(self) -> Path:
        return self.run_dir or Path("runs") / self.bundle.name / "dynamics"


# ---------------------------------------------------------------------- latent cache


@torch.no_grad()
def encode_frames(
    encoder, adapter, frames: np.ndarray, batch_size: int = 256, progress: bool = True
) -> torch.Tensor:
    """uint8 frames ``(N, H, W, 3)`` -> float32 latents ``(N, L, D)`` on the CPU."""
    out = []
    for i in tqdm(range(0, len(frames), batch_size), desc="encoding frames", disable=not progress):
        chunk = torch.from_numpy(frames[i : i + batch_size]).to(encoder.device)
        out.append(adapter.encode(encoder.encode(chunk)).float().cpu())
    return torch.cat(out)


def cached_latents(path: Path, key: str, compute) -> torch.Tensor:
    """Latents stored at ``path`` under fingerprint ``key``, computed (and saved) when stale."""
    if path.exists():
        stored = load_file(str(path))
        if "key" in stored and bytes(stored["key"].numpy()).decode() == key:
            return stored["latents"]
    latents = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {
            "latents": latents.contiguous(),
            "key": torch.frombuffer(bytearray(key.encode()), dtype=torch.uint8),
        },
        str(tmp),
    )
    tmp.replace(path)
    return latents


# ---------------------------------------------------------------------- training


def latent_statistics(
    latents: torch.Tensor, starts: np.ndarray, frame_skip: int
) -> dict[str, list[float]]:
    """Per-channel mean/std of latents ``(N, L, D)`` and std of the change over one clip step."""
    mean = latents.mean(dim=(0, 1))
    std = latents.std(dim=(0, 1)).clamp_min(1e-4)
    idx = torch.as_tensor(starts)
    delta = (latents[idx + frame_skip] - latents[idx]) / std  # (C, L, D) normalised change
    delta_std = (delta.std(dim=(0, 1)) * std).clamp_min(1e-4)
    return {
        "latent_mean": mean.tolist(),
        "latent_std": std.tolist(),
        "delta_std": delta_std.tolist(),
    }


def action_bounds(stats: dict) -> tuple[list[float], list[float]]:
    """The world-model env's action bounds from a dataset's action statistics.

    Actions that all lie in [-1, 1] (our sim's OSC deltas, OpenVLA-normalised datasets) get
    exactly ``[-1, 1]``: the sim envs' action space, so a policy runs unchanged in both worlds.
    Otherwise the data's min / max, widened where a dimension never varies (min == max).
    """
    low = np.asarray(stats["min"][:7], dtype=np.float64)
    high = np.asarray(stats["max"][:7], dtype=np.float64)
    if low.min() >= -1.0 and high.max() <= 1.0:
        return [-1.0] * 7, [1.0] * 7
    flat = high - low < 1e-6
    low[flat] -= 1.0
    high[flat] += 1.0
    return low.tolist(), high.tolist()


def unrolled_mean_loss(
    mean_head,
    first: torch.Tensor,
    context_rows: torch.Tensor,
    latents: torch.Tensor,
    actions: torch.Tensor,
    action_stats: dict,
    steps: int,
    frame_skip: int,
    delta_scale: torch.Tensor | None,
    noisy: Callable[[torch.Tensor], torch.Tensor] = lambda context: context,
    states: torch.Tensor | None = None,
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed MSE of the mean head over ``steps`` more frames of its own rollout.

    Args:
        mean_head: ``(context (B, l, L, D), condition (B, A)[, anchor (B, L, D)]) -> (B, L, D)``
            in target units (the anchor is passed only when given).
        first: its prediction ``(B, L, D)`` of the frame after the context (already scored).
        context_rows: ``(B, l)`` rows of the true context frames in ``latents``.
        latents: normalised latents ``(N, L, D)``; actions: env actions ``(N, 7)``.
        steps: further frames; frame ``k`` is predicted from the previous predictions,
            detached (the pushforward trick), and scored against the true frame.
        delta_scale: ``(D,)`` delta units -> normalised latent units for the ``delta`` target;
            None for the ``frame`` target.
        noisy: context augmentation applied to what the head reads (not to what the next
            frame is built on).
        states: normalised states ``(N, S)`` appended to each frame's condition (state models).
        anchor: the episodes' first frames ``(B, L, D)`` for an anchored mean head, else None.
    """
    context = latents[context_rows]  # (B, l, L, D) true frames
    prediction, total = first, first.new_zeros(())
    skip = torch.arange(frame_skip, device=latents.device)
    for k in range(1, steps + 1):
        frame = prediction.detach()
        if delta_scale is not None:
            frame = context[:, -1] + frame * delta_scale
        context = torch.cat([context[:, 1:], frame[:, None]], dim=1)
        true_row = context_rows[:, -1] + (k + 1) * frame_skip  # (B,)
        action_rows = (true_row - frame_skip)[:, None, None] + skip  # (B, 1, skip)
        condition = normalize_actions(actions[action_rows], action_stats, frame_skip)[:, 0]
        if states is not None:
            condition = torch.cat([condition, states[true_row]], dim=1)  # (B, A + S)
        extra = () if anchor is None else (anchor,)  # the head's contract: (context, condition)
        prediction = mean_head(noisy(context), condition, *extra)
        target = latents[true_row]
        if delta_scale is not None:
            target = (target - frame) / delta_scale
        total = total + F.mse_loss(prediction, target)
    return total


def first_rows(split: dict, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(N,)`` the row of each row's episode's first frame, from a split's starts and lengths."""
    firsts = np.repeat(np.asarray(split["starts"]), np.asarray(split["lengths"]))
    return torch.from_numpy(firsts.astype(np.int64)).to(device)


STAT_KEYS = ("latent_mean", "latent_std", "delta_std")
BEST_WEIGHTS = "best.safetensors"  # in the run directory: the weights with the lowest val_loss


def keep_if_best(trainer: Trainer, model: torch.nn.Module, step: int, val_loss: float) -> None:
    """Save ``model``'s weights to the run directory when ``val_loss`` is the lowest seen.

    The record (step, loss) lives in the trainer's checkpointed state, so a resumed run keeps
    comparing against it.
    """
    best = trainer.state.extra.get("best")
    if best is not None and best["val_loss"] <= val_loss:
        return
    trainer.state.extra["best"] = {"step": int(step), "val_loss": float(val_loss)}
    if is_main_process():
        trainer.out.mkdir(parents=True, exist_ok=True)
        state = cpu_state(getattr(model, "module", model))
        atomic_write(trainer.out / BEST_WEIGHTS, lambda path: save_file(state, path))


class StartingPoint(NamedTuple):
    """The bundle a fine-tuning run starts from (``init_from``)."""

    config: dict  # its config.json
    stats: dict  # its latent statistics (STAT_KEYS)
    config_sha256: str


def _starting_point(config: DynamicsStageConfig, weights: list[str]) -> StartingPoint:
    """``init_from``'s config, latent statistics and config hash, checked against this run."""
    source = read_config(config.init_from)
    section = source.get("dynamics")
    if section is None:
        raise ValueError(f"--init-from {config.init_from} has no trained dynamics model")
    if section.get("encoder_sha256") != weights:
        raise ValueError(
            f"--init-from {config.init_from} was trained on another latent space (encoder/adapter "
            f"weights differ from {config.bundle}'s)"
        )
    ours = {"history": config.history, "frame_skip": config.frame_skip, "target": config.target}
    theirs = {k: section.get(k) for k in ours}
    if ours != theirs:
        raise ValueError(f"--init-from {config.init_from} has {theirs}; this run has {ours}")
    return StartingPoint(
        source, {k: section[k] for k in STAT_KEYS}, bundle_sha256(config.init_from)
    )


def _load_starting_weights(model, dit_config, bundle: Path, source: dict) -> None:
    """Load ``bundle``'s dynamics weights into ``model`` (same architecture, or a clear error).

    A model without states may start one with states (``--state``), and a mean head without the
    first frame one with it (``--mean-head-anchor``): the new parts start at zero, so the grown
    model computes what its start computed until training moves them.
    """
    stored = {k: v for k, v in source["dynamics"]["dit"].items() if k != "action_dropout"}
    grows_state = stored.get("state_dim", 0) == 0 and dit_config.state_dim > 0
    grows_anchor = not stored.get("mean_head_anchor", False) and dit_config.mean_head_anchor
    grows = grows_state or grows_anchor
    new_settings = (("state_dim", "state_map_channels") if grows_state else ()) + (
        ("mean_head_anchor",) if grows_anchor else ()
    )
    stored = {k: v for k, v in stored.items() if k not in new_settings}
    ours = {k: v for k, v in json_ready(dataclasses.asdict(dit_config)).items() if k in stored}
    different = {k: (stored[k], ours[k]) for k in stored if ours.get(k) != stored[k]}
    if different:
        raise ValueError(
            f"--init-from {bundle} has another DiT (setting: (stored, this run)): {different}"
        )
    weights = load_weights(bundle, source, "dynamics")
    if not grows:
        model.load_state_dict(weights)
        return
    # the new parts' initial weights come from a fixed seed, not from whatever drew from torch's
    # global generator before (a run from packed latents builds no encoder, one from a dataset does)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = type(model)(dit_config)
    model.load_state_dict(grown_state_dict(fresh, weights, dit_config, grows_state, grows_anchor))


def grown_state_dict(
    model,
    weights: dict[str, torch.Tensor],
    dit_config,
    grows_state: bool = True,
    grows_anchor: bool = False,
) -> dict:
    """``model``'s state dict with a smaller model's ``weights`` in every place they fit.

    Tensors the smaller model lacks keep ``model``'s initialisation (the state parts, whose
    outputs start at zero). The mean head's first convolution gains input channels (its layout:
    context, condition, state map, first frame): the condition's state channels and the first
    frame's channels start at zero; the state map's channels keep their random initialisation
    (the map itself starts at zero, so they change nothing yet, and zero on both sides would
    never learn).
    """
    ours = model.state_dict()
    out = {}
    for name, tensor in ours.items():
        old = weights.get(name)
        if old is None:
            out[name] = tensor
        elif old.shape == tensor.shape:
            out[name] = old
        elif name == "mean_head.inp.weight" and old.shape[1] < tensor.shape[1]:
            grown = tensor.clone()
            grown[:, : old.shape[1]] = old
            if grows_state:
                grown[:, old.shape[1] : old.shape[1] + dit_config.state_dim] = 0.0
            if grows_anchor:
                grown[:, -dit_config.in_channels :] = 0.0
            out[name] = grown
        else:
            raise ValueError(f"cannot grow {name} from {tuple(old.shape)} to {tuple(tensor.shape)}")
    unused = sorted(set(weights) - set(ours))
    if unused:
        raise ValueError(f"the starting weights hold tensors this model lacks: {unused[:5]}")
    return out


def run_dynamics_stage(config: DynamicsStageConfig, progress: bool = True) -> Path:
    """Train the DiT; write ``dynamics.safetensors`` and the action statistics into the bundle."""
    from train.packed import encoded_dataset, latent_space_key, read_packed
    from wm_env.model.dit import DiT, DiTConfig
    from wm_env.model.flow import make_scheduler, shift_for_latents, training_loss
    from wm_env.model.state_head import STATE_KEYS, StateNormalizer, state_statistics

    device = torch.device(config.runtime.device)
    bundle_config = read_config(config.bundle)
    if "encoder" not in bundle_config:
        raise ValueError(
            f"{config.bundle} has no encoder yet: run `wmgym train encoder --bundle {config.bundle}` first"
        )
    run_dir = config.resolved_run_dir()
    weights = latent_space_hashes(bundle_config)
    if config.packed:
        data = read_packed(config.packed, latent_space_key(bundle_config))
    else:
        data = encoded_dataset(
            config.bundle,
            config.data,
            run_dir,
            config.runtime.device,
            progress,
            bool(config.val_every),
        )
    train, val, latents = data.train, data.val, data.train_latents  # latents (N, L, D)
    tokens, channels = latents.shape[1:]
    grid = tuple(bundle_config["encoder"]["grid"])

    # clips long enough for the mean head's own rollout (it reads frames after the DiT's clip)
    unroll = config.mean_head_unroll - 1 if config.mean_head_width else 0
    clips = ClipIndex.build(train, config.history, config.future + unroll, config.frame_skip)
    source = _starting_point(config, weights) if config.init_from else None
    stats = (
        source.stats
        if source
        else latent_statistics(
            latents, clips.starts + (config.history - 1) * config.frame_skip, config.frame_skip
        )
    )
    mean, std = torch.tensor(stats["latent_mean"]), torch.tensor(stats["latent_std"])
    delta_std = torch.tensor(stats["delta_std"])
    normalized = ((latents - mean) / std).to(device)  # (N, L, D)
    actions = torch.from_numpy(train["actions"]).to(device)  # (N, 7)
    action_stats = dict(data.action_stats)
    states = state_norm = None  # normalised (N, S) robot states of state models
    if config.state:
        if train.get("states") is None:
            raise ValueError(
                "--state needs the robot's states (observation.state) in the training data; "
                f"{config.packed or config.data.dataset} has none"
            )
        if source and all(k in source.config["dynamics"] for k in STATE_KEYS):
            state_stats = {k: source.config["dynamics"][k] for k in STATE_KEYS}
        else:
            state_stats = state_statistics(train["states"], train["starts"], train["lengths"])
        stats = {**stats, **state_stats}
        state_norm = StateNormalizer(state_stats, device)
        states = state_norm.normalize(torch.from_numpy(train["states"]).to(device))

    shift = config.shift or shift_for_latents(tokens, config.patch_size, channels)
    scheduler_section = (
        {"name": "flow", "shift": shift} if config.objective == "flow" else {"name": "ddpm"}
    )
    scheduler = make_scheduler(
        **{
            "name": scheduler_section["name"],
            **({"shift": shift} if config.objective == "flow" else {}),
        }
    )
    if config.objective == "flow":  # sampling must label context frames as training did
        scheduler_section["context_time"] = scheduler.context_time
    dit_config = DiTConfig(
        in_channels=channels,
        grid=grid,
        patch_size=config.patch_size,
        preset=config.preset,
        hidden=config.hidden,
        depth=config.depth,
        heads=config.heads,
        action_dim=condition_dim(config.frame_skip),
        max_frames=config.history + config.future,
        action_dropout=config.action_dropout,
        mean_head_width=config.mean_head_width,
        mean_head_depth=config.mean_head_depth,
        mean_head_history=config.history,
        state_dim=state_norm.dim if state_norm else 0,
        mean_head_anchor=config.mean_head_anchor,
    )
    model = DiT(dit_config)
    if source:
        _load_starting_weights(model, dit_config, config.init_from, source.config)
    batch = config.optim.batch_size
    frames_per_clip = config.history + config.future
    firsts = first_rows(train, device)  # (N,) each row's episode's first row

    def loss_fn(dit, step: int):
        rng = batch_rng(config.runtime, step)
        clip_ids = rng.integers(0, len(clips), batch)
        loss, terms = batch_loss(
            dit, normalized, actions, states, firsts, clips.starts[clip_ids], step
        )
        if validation is not None and step % config.val_every == 0:
            shipped = trainer.ema if trainer.ema is not None else dit  # the weights written out
            was_training = shipped.training
            shipped.eval()  # no action dropout, no context noise
            with torch.no_grad():
                val_loss, val_terms = batch_loss(shipped, *validation, seed_step=VAL_SEED_STEP)
            shipped.train(was_training)
            terms["val_loss"] = val_loss.item()
            for name in ("mean_loss", "state_loss"):
                if name in val_terms:
                    terms[f"val_{name}"] = val_terms[name]
            if config.keep_best:
                keep_if_best(trainer, shipped, step, terms["val_loss"])
        return loss, terms

    def batch_loss(dit, normalized, actions, states, firsts, clip_starts, seed_step: int):
        """Loss of the clips starting at rows ``clip_starts`` of ``normalized`` (one split;
        ``states``: its normalised robot states, or None; ``firsts``: each row's episode's
        first row)."""
        starts = torch.as_tensor(clip_starts, device=device)  # (B,)
        rows = (
            starts[:, None] + torch.arange(frames_per_clip, device=device) * config.frame_skip
        )  # (B, T)
        x0 = normalized[rows]  # (B, T, L, D)
        if config.target == "delta":
            change = (x0[:, -1] - x0[:, -2]) * (std / delta_std).to(device)
            x0 = torch.cat([x0[:, :-1], change[:, None]], dim=1)
        action_rows = rows[:, :-1, None] + torch.arange(
            config.frame_skip, device=device
        )  # (B, T-1, skip)
        cond = normalize_actions(
            actions[action_rows], action_stats, config.frame_skip
        )  # (B, T-1, A)
        null = torch.zeros_like(cond[:, :1])
        null[..., -1] = 1.0
        cond = torch.cat(
            [null, cond], dim=1
        )  # (B, T, A): frame i is conditioned on the action into it
        generator = torch.Generator(device=device).manual_seed(
            config.runtime.seed * 1_000_003 + seed_step
        )
        core = getattr(dit, "module", dit)  # dit may be DDP-wrapped
        terms = {}
        state_loss = x0.new_zeros(())
        if states is not None:  # (B, T, S) states of the clip's frames, as the model reads them
            clip_states = states[rows]
            state_loss = _state_loss(core.state_head, clip_states, cond)
            terms["state_loss"] = state_loss.item()
            if core.training and config.state_noise:
                noise = torch.randn(clip_states.shape, generator=generator, device=device)
                clip_states = clip_states + config.state_noise * noise
            cond = torch.cat([cond, clip_states], dim=2)  # (B, T, A + S)
        mean_head = core.mean_head
        if mean_head is None:
            flow = training_loss(dit, scheduler, x0, config.history, cond, generator=generator)
            return flow + state_loss, terms
        # regression of the mean + flow on the residual (wm_env/model/mean_head.py)
        sigma = config.mean_head_context_noise if mean_head.training else 0.0

        def noisy(context: torch.Tensor) -> torch.Tensor:  # (B, l, L, D), augmented in training
            if not sigma:
                return context
            noise = torch.randn(context.shape, generator=generator, device=context.device)
            return context + sigma * noise

        anchor = normalized[firsts[rows[:, 0]]] if config.mean_head_anchor else None  # (B, L, D)
        mean = mean_head(noisy(x0[:, : config.history]), cond[:, -1], anchor)  # (B, L, D)
        mean_loss = F.mse_loss(mean, x0[:, -1])
        if unroll:
            mean_loss = mean_loss + unrolled_mean_loss(
                mean_head, mean, rows[:, : config.history], normalized, actions, action_stats,
                unroll, config.frame_skip, delta_scale, noisy, states, anchor,
            )  # fmt: skip
            mean_loss = mean_loss / (1 + unroll)
        x0 = torch.cat([x0[:, :-1], (x0[:, -1] - mean.detach())[:, None]], dim=1)
        flow_loss = training_loss(dit, scheduler, x0, config.history, cond, generator=generator)
        return flow_loss + mean_loss + state_loss, {**terms, "mean_loss": mean_loss.item()}

    def _state_loss(state_head, clip_states: torch.Tensor, conds: torch.Tensor):
        """MSE of the state head's change into the clip's last frame (in delta units), from
        the context states and the actions into the clip's frames ``conds`` ``(B, T, A)``."""
        change = (clip_states[:, -1] - clip_states[:, -2]) / state_norm.delta_scale()  # (B, S)
        context = clip_states[:, : config.history]  # (B, l, S)
        return F.mse_loss(state_head(context, conds[:, :, : dit_config.action_dim]), change)

    delta_scale = (delta_std / std).to(device) if config.target == "delta" else None
    validation = None  # (normalised latents, actions, fixed clip starts) of the held-out split
    if config.val_every and val is not None:
        val_clips = ClipIndex.build(val, config.history, config.future + unroll, config.frame_skip)
        if len(val_clips):
            val_latents = data.val_latents
            pick = np.linspace(0, len(val_clips) - 1, min(VAL_CLIPS, len(val_clips))).astype(int)
            val_states = None
            if state_norm is not None:
                val_states = state_norm.normalize(torch.from_numpy(val["states"]).to(device))
            validation = (
                ((val_latents - mean) / std).to(device),
                torch.from_numpy(val["actions"]).to(device),
                val_states,
                first_rows(val, device),
                val_clips.starts[pick],
            )

    trainer = Trainer(
        model, loss_fn, run_dir, config.optim, config.runtime, run_config=config_dict(config)
    )
    pin_run_inputs(trainer, weights)
    trained = trainer.fit(progress)
    best = trainer.state.extra.get("best") if config.keep_best else None
    if best is not None:
        trained.load_state_dict(load_file(str(run_dir / BEST_WEIGHTS), device=str(device)))
    section = {
        "dit": json_ready(dataclasses.asdict(dit_config)),
        "scheduler": scheduler_section,
        "history": config.history,
        "future": config.future,
        "frame_skip": config.frame_skip,
        "target": config.target,
        "num_steps": config.num_steps,
        "temperature": config.temperature,
        "tokens": int(tokens),
        "steps": trainer.state.step,
        "train_seconds": round(trainer.state.seconds, 1),
        "dataset": data.fingerprint,
        "encoder_sha256": weights,
        **stats,
    }
    if best is not None:  # early stopping: which weights these are
        section["selected"] = {"by": "val_loss", **best}
    if source:  # provenance of a fine-tuned model
        section["init_from"] = {
            "bundle": str(config.init_from),
            "config_sha256": source.config_sha256,
            "steps": source.config["dynamics"].get("steps"),
        }
    write_component(config.bundle, "dynamics", section, trained.state_dict())
    low, high = action_bounds(action_stats)
    update_config(
        config.bundle,
        actions={"stats": action_stats, "low": low, "high": high, "frame_skip": config.frame_skip},
    )
    return config.bundle
