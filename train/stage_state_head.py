"""``wmgym train state-head``: fit a state model's state head alone, to convergence.

The frame model of a state model reads the true state (plus noise) in training, never the state
head's prediction, so the head can be trained apart from it, after it, and for as long as it
needs: it is a small MLP on 8-D states, thousands of steps a minute on one core, where the
joint run gives it only the DiT's few thousand steps. Here it also learns over rollouts of its
own predictions (``unroll`` steps, each scored against the true next state from where the head
now is), so that it corrects the drift it causes in long rollouts.

Figures (held-out episodes, rolled out from their first state under the recorded actions):
end-effector and gripper error in cm at steps 1, 10, 20 and 40, before and after the fit.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wm_env.bundle import json_ready, load_weights, read_config, write_component
from wm_env.dataset.split import DataConfig

REPORT_STEPS = (1, 10, 20, 40)


@dataclass(frozen=True)
class StateHeadStageConfig:
    """Fit the state head of a state model (``wmgym train dynamics --state``) on its own.

    Attributes:
        bundle: the state model's bundle (rewritten with the fitted head).
        data: the dataset whose training split's states and actions it fits (the split every
            stage uses); ignored with ``packed``.
        packed: a packed-latents file holding the states (``wmgym train pack``).
        steps, batch_size, lr: AdamW steps (cosine decay to a tenth), windows per step, rate.
        unroll: steps of its own rollout each window is scored over.
        start_fraction: share of each batch's windows that begin at an episode's first frame,
            its state repeated as history, as every runtime rollout begins (the first step from
            rest moves the arm 7 cm on average, a transient that windows drawn anywhere show
            once per episode); the rest begin at any frame.
        actions: actions the head reads (the new one and the ones before it; see
            :class:`wm_env.model.state_head.StateHead`); None keeps the bundle's. A head given
            more starts as the bundle's (the older actions' weights at zero).
        through_time: let the gradient flow through the whole rollout (backpropagation through
            time, gradient norm clipped to 1), so that a step is also trained for what it does
            to the steps after it; else each step starts from the last one's prediction,
            detached (``docs/design.md``, "Fitting the state head through time").
        seed: batch sampling.
    """

    bundle: Path = Path("models/state")
    data: DataConfig = field(default_factory=DataConfig)
    packed: Path | None = None
    steps: int = 6000
    batch_size: int = 512
    lr: float = 1e-3
    unroll: int = 8
    actions: int | None = None
    through_time: bool = False
    start_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_fraction <= 1.0:
            raise ValueError(f"start_fraction must be in [0, 1]; got {self.start_fraction}")
        if self.actions is not None and self.actions < 1:
            raise ValueError(f"actions must be >= 1; got {self.actions}")
        if self.steps < 1 or self.batch_size < 1 or self.unroll < 1 or self.lr <= 0:
            raise ValueError(
                f"steps, batch_size, unroll must be >= 1 and lr > 0; got {self.steps}, "
                f"{self.batch_size}, {self.unroll}, {self.lr}"
            )


def split_arrays(config: StateHeadStageConfig, space: str) -> tuple[dict, dict | None]:
    """(train, val) arrays with ``states``, ``actions``, ``starts``, ``lengths``."""
    if config.packed is not None:
        from train.packed import read_packed

        data = read_packed(config.packed, space)
        return data.train, data.val
    from wm_env.dataset.lerobot import LeRobotDataset
    from wm_env.dataset.split import split_episodes

    dataset = LeRobotDataset(config.data.dataset)
    train_ids, val_ids = split_episodes(
        dataset.num_episodes, config.data.val_fraction, config.data.split_seed
    )

    def arrays(indices) -> dict | None:
        if not len(indices):
            return None
        ids = dataset.episode_ids[indices]
        states = [dataset.states(int(e)) for e in ids]
        actions = [dataset.actions(int(e)) for e in ids]
        lengths = np.array([len(s) for s in states], np.int64)
        return {
            "states": np.concatenate(states),
            "actions": np.concatenate(actions),
            "lengths": lengths,
            "starts": np.cumsum(lengths) - lengths,
        }

    return arrays(train_ids), arrays(val_ids)


def window_starts(starts: np.ndarray, lengths: np.ndarray, unroll: int) -> np.ndarray:
    """Rows from which ``unroll`` steps stay inside their episode (the first steps from there)."""
    rows = [
        np.arange(s, s + n - unroll) for s, n in zip(starts, lengths, strict=True) if n > unroll
    ]
    return np.concatenate(rows) if rows else np.empty(0, np.int64)


class StateRollout:
    """The head rolled out over windows of one split (normalised states, conditions)."""

    def __init__(self, arrays: dict, norm, action_stats: dict, action_dim: int, history: int):
        from train.stage_dynamics import first_rows
        from wm_env.world_model import normalize_actions

        self.history = history
        self.firsts = first_rows(arrays)  # (N,) each row's episode's first row
        self.states = norm.normalize(torch.from_numpy(arrays["states"]))  # (N, S)
        actions = torch.from_numpy(arrays["actions"]).float()[:, None]  # (N, 1, 7)
        self.conditions = normalize_actions(actions, action_stats, 1)[:, :action_dim]  # (N, A)
        self.scale = norm.delta_scale()  # (S,)
        self.starts, self.lengths = arrays["starts"], arrays["lengths"]

    def loss(
        self, head, rows: torch.Tensor, steps: int, through_time: bool = False
    ) -> torch.Tensor:
        """Mean MSE (delta units) over ``steps`` of the head's own rollout from ``rows`` (B,),
        the frames it first steps from, with the true states before them as history (the
        episode's first repeated before its start, as the runtime starts); each step's predicted
        state is scored against the true one. ``through_time`` keeps the rollout in the graph
        instead of detaching each step's start."""
        index = rows[:, None] + torch.arange(1 - self.history, 1)  # (B, l)
        context = self.states[torch.maximum(index, self.firsts[rows][:, None])]  # (B, l, S)
        total = context.new_zeros(())
        for k in range(steps):
            now = rows + k  # (B,) the row of the frame the head steps from
            change = head(context, self.recent_actions(now, head.actions))
            target = (self.states[now + 1] - context[:, -1]) / self.scale  # back to the truth
            total = total + F.mse_loss(change, target)
            following = context[:, -1] + change * self.scale
            if not through_time:
                following = following.detach()
            context = torch.cat([context[:, 1:], following[:, None]], dim=1)
        return total / steps

    def recent_actions(self, rows: torch.Tensor, count: int) -> torch.Tensor:
        """``(B, count, A)`` the conditions of the ``count`` actions up to rows ``rows`` (B,),
        oldest first; those before an episode's start are the null action."""
        from wm_env.model.dit import null_actions

        index = rows[:, None] + torch.arange(1 - count, 1)  # (B, count)
        before = index < self.firsts[rows][:, None]
        out = self.conditions[index.clamp(min=0)].clone()
        out[before] = null_actions(1, 1, out.shape[-1], dtype=out.dtype)[0, 0]
        return out

    @torch.no_grad()
    def episode_errors(self, head, norm, horizon: int = 40) -> dict[str, list[float]]:
        """Errors per reported step of a rollout from each episode's start (the first state
        repeated as history, as the runtime starts): end effector and gripper in cm for the
        sim's 8-D layout, else the distance between states (``state``, the data's units)."""
        errors: dict[str, list[np.ndarray]] = {}
        horizon = min(horizon, int(self.lengths.max()) - 1)  # steps some episode reaches
        for s, n in zip(self.starts, self.lengths, strict=True):
            steps = min(horizon, int(n) - 1)
            context = self.states[s].expand(1, self.history, -1).clone()
            path = []
            for k in range(steps):
                change = head(context, self.recent_actions(torch.tensor([s + k]), head.actions))
                following = (context[:, -1] + change * self.scale).clamp(-10, 10)
                context = torch.cat([context[:, 1:], following[:, None]], dim=1)
                path.append(following[0])
            predicted = norm.unnormalize(torch.stack(path))  # (steps, S)
            true = norm.unnormalize(self.states[s + 1 : s + 1 + steps])
            if predicted.shape[1] == 8:
                per_step = {
                    "eef_cm": (predicted[:, :3] - true[:, :3]).norm(dim=1) * 100,
                    "gripper_cm": (predicted[:, 7] - true[:, 7]).abs() * 100,
                }
            else:
                per_step = {"state": (predicted - true).norm(dim=1)}
            for key, values in per_step.items():
                padded = np.pad(values.numpy(), (0, horizon - steps), constant_values=np.nan)
                errors.setdefault(key, []).append(padded)
        return {
            key: [float(np.nanmean(np.array(rows)[:, t - 1])) for t in REPORT_STEPS if t <= horizon]
            for key, rows in errors.items()
        }


def run_state_head_stage(config: StateHeadStageConfig, progress: bool = True) -> dict:
    """Fit the bundle's state head; rewrite its dynamics weights; return the figures."""
    from train.packed import latent_space_key
    from wm_env.model.state_head import StateNormalizer
    from wm_env.world_model import build_dit_from_config

    bundle_config = read_config(config.bundle)
    dynamics = bundle_config.get("dynamics", {})
    if not dynamics.get("dit", {}).get("state_dim"):
        raise ValueError(
            f"{config.bundle} has no state model: train one with `wmgym train dynamics --state`"
        )
    dit = build_dit_from_config(bundle_config, config.bundle).train()
    head = dit.state_head
    if config.actions is not None and config.actions != head.actions:
        head = head.with_actions(config.actions)
    head.requires_grad_(True)
    norm = StateNormalizer(dynamics)
    train, val = split_arrays(config, latent_space_key(bundle_config))
    if train is None or train.get("states") is None or val is None:
        raise ValueError("the state head needs states in the training data and held-out episodes")
    stats = bundle_config["actions"]["stats"]
    args = (norm, stats, dit.config.action_dim, dit.config.mean_head_history)
    fit, held_out = StateRollout(train, *args), StateRollout(val, *args)
    windows = torch.from_numpy(window_starts(train["starts"], train["lengths"], config.unroll))
    firsts = torch.from_numpy(train["starts"][train["lengths"] > config.unroll])
    if not len(windows):
        raise ValueError(f"no training episode is longer than unroll={config.unroll} steps")
    fixed = windows[torch.linspace(0, len(windows) - 1, min(4096, len(windows))).long()]
    at_start = round(config.start_fraction * len(fixed))  # drawn as the batches are
    fixed[:at_start] = firsts[torch.arange(at_start) % len(firsts)]

    def fit_loss() -> float:  # on a fixed sample of training windows
        with torch.no_grad():
            return float(fit.loss(head, fixed, config.unroll))

    head.eval()
    before, loss_before = held_out.episode_errors(head, norm), fit_loss()
    head.train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps, config.lr / 10)
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    for _ in tqdm(range(config.steps), desc="state head", disable=not progress):
        rows = windows[torch.randint(len(windows), (config.batch_size,), generator=generator)]
        at_start = torch.rand(config.batch_size, generator=generator) < config.start_fraction
        starts = firsts[torch.randint(len(firsts), (config.batch_size,), generator=generator)]
        rows = torch.where(at_start, starts, rows)
        loss = fit.loss(head, rows, config.unroll, config.through_time)
        optimizer.zero_grad()
        loss.backward()
        if config.through_time:
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    head.eval()
    after = held_out.episode_errors(head, norm)
    figures = {
        "steps": config.steps,
        "unroll": config.unroll,
        "seconds": round(time.perf_counter() - started, 1),
        "fit_loss_before": loss_before,
        "fit_loss_after": fit_loss(),
        "report_steps": list(REPORT_STEPS),
        "held_out_before": before,
        "held_out_after": after,
    }
    weights = load_weights(config.bundle, bundle_config, "dynamics")
    fitted = {f"state_head.{k}": v.detach().to(weights[f"state_head.{k}"].dtype)
              for k, v in head.state_dict().items()}  # fmt: skip
    section = {k: v for k, v in dynamics.items() if k != "weights"}
    section["dit"] = {**section["dit"], "state_head_actions": head.actions}
    section["state_head_fit"] = json_ready({**dataclasses.asdict(config), **figures})
    write_component(config.bundle, "dynamics", section, {**weights, **fitted})
    return figures


def format_figures(figures: dict) -> str:
    """The before/after table printed by the CLI."""
    first = next(iter(figures["held_out_after"].values()))
    steps = figures["report_steps"][: len(first)]
    lines = ["| held-out rollout | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|" + "---|" * len(steps)]  # fmt: skip
    for when in ("before", "after"):
        block = figures[f"held_out_{when}"]
        for key, values in block.items():
            label = {"eef_cm": "end effector (cm)", "gripper_cm": "gripper (cm)"}.get(key, key)
            lines.append(f"| {label}, {when} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return "\n".join(lines) + f"\n\n{json.dumps({'seconds': figures['seconds']})}"
