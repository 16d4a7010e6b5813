"""Planning with the world model: a batched cross-entropy-method (CEM) planner and an MPC agent.

Three layers, each usable alone:

- :func:`cem_plan` / :func:`cem_plan_batch`: a pure CEM over action sequences ``(H, 7)``. It knows
  nothing about world models: a cost function scores all ``S`` sampled sequences in one call.
- :func:`rollout_costs` / :func:`plan_in_world_model`: the cost of a sequence is the distance
  between the world model's predicted latents and goal latents (L1, L2 or cosine), rolled out
  from a :meth:`~wm_env.world_model.WorldModel.snapshot` for all samples in one batch; the
  model's real state is restored afterwards, so planning never changes the episode.
- :class:`CEMPolicy`: model-predictive control. It sees only observations, resets its own copy
  of the world model from the last ``history`` observed frames, plans towards a goal image, and
  replans every ``replan_every`` steps.
"""

from __future__ import annotations

import copy
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from policies.base import check_instruction, check_observation
from wm_env.errors import lookup
from wm_env.spaces import ACTION_DIM

if TYPE_CHECKING:
    from wm_env.dataset.lerobot import LeRobotDataset
    from wm_env.envs.starts import Start
    from wm_env.world_model import WorldModel, WorldModelState

COSTS = ("l1", "l2", "cosine")
GOAL_SOURCES = ("expert",)  # goals a CEMPolicy makes per start (CEMPolicy.for_start)

CostFn = Callable[[np.ndarray], Any]  # (S, H, 7) -> (S,) costs, lower is better
BatchCostFn = Callable[[np.ndarray], Any]  # (P, S, H, 7) -> (P, S)


# ---------------------------------------------------------------------- the planner


@dataclass(frozen=True)
class CEMConfig:
    """Settings of the cross-entropy method (checked when built).

    Attributes:
        samples: action sequences sampled per iteration.
        elites: lowest-cost samples the next distribution is fitted to (``1..samples``).
        iterations: sample-and-refit rounds.
        horizon: actions per planned sequence.
        std: initial standard deviation of the sampling Gaussian (per action element).
        bounds: ``(low, high)`` every sampled action element is clipped to, in env units
            (the action space is ``[-1, 1]``).
        momentum: weight of the old mean/std in each refit (0: replace them by the elites').
        cost: latent distance for world-model planning: ``l1``, ``l2`` (root mean square) or
            ``cosine`` (1 - cosine similarity of the flattened latents).
        sum_over_horizon: sum the distance over every predicted frame instead of taking the
            last frame's only.
        dims: the action dimensions searched (default: all 7); the others stay at the initial
            mean (e.g. ``(0, 1, 2, 6)``: translate and grip, never rotate).
    """

    samples: int = 64
    elites: int = 8
    iterations: int = 3
    horizon: int = 4
    std: float = 1.0
    bounds: tuple[float, float] = (-1.0, 1.0)
    momentum: float = 0.0
    cost: str = "l2"
    sum_over_horizon: bool = False
    dims: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("samples", "iterations", "horizon"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CEMConfig.{name} must be >= 1; got {getattr(self, name)}")
        if not 1 <= self.elites <= self.samples:
            raise ValueError(
                f"CEMConfig.elites must be in [1, samples={self.samples}]; got {self.elites}"
            )
        if not (np.isfinite(self.std) and self.std > 0):
            raise ValueError(f"CEMConfig.std must be > 0; got {self.std}")
        bounds = np.asarray(self.bounds, dtype=np.float64)
        if bounds.shape != (2,) or not (np.isfinite(bounds).all() and bounds[0] < bounds[1]):
            raise ValueError(
                f"CEMConfig.bounds must be finite (low, high) with low < high; got {self.bounds}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"CEMConfig.momentum must be in [0, 1); got {self.momentum}")
        lookup("cost", self.cost, {c: c for c in COSTS})
        if self.dims is not None:
            dims = list(self.dims)
            if (
                not dims
                or len(set(dims)) != len(dims)
                or not all(0 <= d < ACTION_DIM for d in dims)
            ):
                raise ValueError(
                    f"CEMConfig.dims must be distinct action dimensions in [0, {ACTION_DIM}); got {self.dims}"
                )

    @property
    def search_mask(self) -> np.ndarray:
        """float ``(7,)``: 1 for the dimensions searched, 0 for those held at the initial mean."""
        mask = np.zeros(ACTION_DIM) if self.dims is not None else np.ones(ACTION_DIM)
        if self.dims is not None:
            mask[list(self.dims)] = 1.0
        return mask


def _initial_mean(init_mean, problems: int, config: CEMConfig) -> np.ndarray:
    """``None`` / ``(7,)`` / ``(H, 7)`` / ``(P, H, 7)`` -> float64 ``(P, H, 7)`` within bounds."""
    shape = (problems, config.horizon, ACTION_DIM)
    if init_mean is None:
        mean = np.zeros(shape)
    else:
        mean = np.asarray(init_mean, dtype=np.float64)
        try:
            mean = np.broadcast_to(mean, shape).copy()
        except ValueError:
            raise ValueError(
                f"init_mean must broadcast to (problems, horizon, 7) = {shape}; got {mean.shape}"
            ) from None
        if not np.isfinite(mean).all():
            raise ValueError("init_mean contains NaN or inf")
    return np.clip(mean, *config.bounds)


def _check_costs(costs: Any, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(costs, torch.Tensor):
        costs = costs.detach().cpu().numpy()
    costs = np.asarray(costs, dtype=np.float64)
    if costs.shape != shape:
        raise ValueError(f"the cost function must return {shape} costs; got {costs.shape}")
    if np.isnan(costs).any():
        raise ValueError("the cost function returned NaN costs")
    return costs


def cem_plan_batch(
    cost_fn: BatchCostFn,
    config: CEMConfig,
    rng: np.random.Generator | int | None = None,
    init_mean=None,
    problems: int = 1,
) -> tuple[np.ndarray, dict[str, Any]]:
    """CEM on ``problems`` independent problems at once (one cost call per iteration).

    Each iteration draws ``samples`` sequences per problem from a Gaussian (mean, std) clipped to
    the bounds, scores them with ``cost_fn(actions (P, S, H, 7)) -> (P, S)``, keeps the
    ``elites`` cheapest and refits mean and std to them (blended with the old ones by
    ``momentum``). The mean starts at ``init_mean`` (zeros when None) and the std at
    ``config.std`` (0 for dimensions not in ``config.dims``, which keep their initial mean).

    Returns:
        ``(best (P, H, 7) float32, info)``: the lowest-cost sequence seen per problem, and
        ``info`` with ``best_cost (P,)``, the final ``mean``/``std`` ``(P, H, 7)``,
        ``iteration_best`` / ``iteration_elite_mean`` ``(iterations, P)`` and ``evaluations``.
    """
    if problems < 1:
        raise ValueError(f"problems must be >= 1; got {problems}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    low, high = config.bounds
    mean = _initial_mean(init_mean, problems, config)  # (P, H, 7)
    std = np.full_like(mean, config.std) * config.search_mask  # 0: dimension held fixed
    best = mean.copy()
    best_cost = np.full(problems, np.inf)
    iteration_best, iteration_elite_mean = [], []
    rows = np.arange(problems)[:, None]
    for _ in range(config.iterations):
        noise = rng.standard_normal((problems, config.samples, *mean.shape[1:]))
        samples = np.clip(mean[:, None] + std[:, None] * noise, low, high).astype(np.float32)
        costs = _check_costs(cost_fn(samples), (problems, config.samples))  # (P, S)
        order = np.argsort(costs, axis=1, kind="stable")[:, : config.elites]  # (P, E)
        elites = samples[rows, order].astype(np.float64)  # (P, E, H, 7)
        cheapest = costs[rows[:, 0], order[:, 0]]  # (P,)
        better = cheapest < best_cost
        best[better] = samples[better, order[better, 0]]
        best_cost = np.where(better, cheapest, best_cost)
        iteration_best.append(cheapest)
        iteration_elite_mean.append(costs[rows, order].mean(axis=1))
        m = config.momentum
        mean = m * mean + (1 - m) * elites.mean(axis=1)
        std = m * std + (1 - m) * elites.std(axis=1)
    info = {
        "best_cost": best_cost,
        "mean": mean.astype(np.float32),
        "std": std.astype(np.float32),
        "iteration_best": np.stack(iteration_best),
        "iteration_elite_mean": np.stack(iteration_elite_mean),
        "evaluations": config.iterations * config.samples * problems,
    }
    return best.astype(np.float32), info


def cem_plan(
    cost_fn: CostFn,
    config: CEMConfig,
    rng: np.random.Generator | int | None = None,
    init_mean=None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """CEM for one problem: ``cost_fn(actions (S, H, 7)) -> (S,)`` scores all samples at once.

    Returns ``(best (H, 7) float32, info)`` with ``info`` as in :func:`cem_plan_batch` for a
    single problem (``best_cost`` a float, ``mean``/``std`` ``(H, 7)``, per-iteration lists).
    """
    init = None if init_mean is None else np.asarray(init_mean, dtype=np.float64)[None]
    best, info = cem_plan_batch(
        lambda a: _check_costs(cost_fn(a[0]), (config.samples,))[None], config, rng, init
    )
    single = {
        "best_cost": float(info["best_cost"][0]),
        "mean": info["mean"][0],
        "std": info["std"][0],
        "iteration_best": info["iteration_best"][:, 0].tolist(),
        "iteration_elite_mean": info["iteration_elite_mean"][:, 0].tolist(),
        "evaluations": info["evaluations"],
    }
    return best[0], single


# ---------------------------------------------------------------------- world-model costs


def latent_distance(pred: torch.Tensor, goal: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-episode distance of latents ``(N, L, D)`` to goals ``(N, L, D)`` -> ``(N,)``.

    ``l1``: mean absolute difference; ``l2``: root mean square difference; ``cosine``: one minus
    the cosine similarity of the flattened latents.
    """
    kind = lookup("cost", kind, {c: c for c in COSTS})
    diff = (pred - goal).flatten(1)
    if kind == "l1":
        return diff.abs().mean(1)
    if kind == "l2":
        return diff.square().mean(1).sqrt()
    return 1 - torch.nn.functional.cosine_similarity(pred.flatten(1), goal.flatten(1), dim=1)


@torch.no_grad()
def rollout_costs(
    model: WorldModel,
    start: WorldModelState,
    goal_latents: torch.Tensor,
    actions: np.ndarray,
    cost: str = "l2",
    sum_over_horizon: bool = False,
    max_rollouts: int | None = None,
) -> np.ndarray:
    """Costs ``(P, S)`` of action sequences ``(P, S, H, 7)`` rolled out from ``start``.

    ``start`` holds ``P`` episodes (one per problem); sample ``s`` of problem ``p`` is rolled out
    from episode ``p`` (all samples of a problem share its noise), and its cost is the distance
    of the predicted normalised latents to ``goal_latents[p]`` (``(P, L, D)``) after the last
    step (or summed over all steps). At most ``max_rollouts`` rollouts run per model call. The
    model is left in a planning state: callers restore the real one (:func:`plan_in_world_model`).
    """
    problems, samples, horizon = actions.shape[:3]
    if start.context.shape[0] != problems or goal_latents.shape[0] != problems:
        raise ValueError(
            f"{problems} problems but {start.context.shape[0]} start episodes and "
            f"{goal_latents.shape[0]} goals"
        )
    flat = actions.reshape(problems * samples, horizon, -1)
    owner = np.repeat(np.arange(problems), samples)  # problem of each rollout
    chunk = max_rollouts or len(flat)
    costs = []
    for first in range(0, len(flat), chunk):
        rows = slice(first, first + chunk)
        model.restore(start.select(owner[rows]))
        goal = goal_latents[torch.as_tensor(owner[rows], device=goal_latents.device)]
        total = torch.zeros(len(owner[rows]), device=goal.device)
        for t in range(horizon):
            model.step(flat[rows, t], decode=False)
            if sum_over_horizon or t == horizon - 1:
                total += latent_distance(model.latest_latents.float(), goal, cost)
        costs.append(total.cpu().numpy())
    return np.concatenate(costs).reshape(problems, samples)


def plan_in_world_model(
    model: WorldModel,
    goal_latents: torch.Tensor,
    config: CEMConfig,
    rng: np.random.Generator | int | None = None,
    init_mean=None,
    max_rollouts: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """CEM from the model's current state (``P`` episodes) towards ``goal_latents (P, L, D)``.

    Returns ``(best (P, H, 7), info)`` (see :func:`cem_plan_batch`). The model's state is
    snapshotted first and restored afterwards, also when planning fails.
    """
    real = model.snapshot()
    problems = real.context.shape[0]
    goal_latents = torch.as_tensor(goal_latents, device=model.device).float()
    if goal_latents.shape != (problems, *model.latent_shape):
        raise ValueError(
            f"goal_latents must be ({problems}, {', '.join(map(str, model.latent_shape))}); "
            f"got {tuple(goal_latents.shape)}"
        )
    try:
        return cem_plan_batch(
            lambda a: rollout_costs(
                model, real, goal_latents, a, config.cost, config.sum_over_horizon, max_rollouts
            ),
            config,
            rng,
            init_mean,
            problems,
        )
    finally:
        model.restore(real)


# ---------------------------------------------------------------------- goals


def episode_goal(
    dataset: LeRobotDataset | str | os.PathLike, episode: int, camera: str = "image"
) -> np.ndarray:
    """The last frame of a dataset episode, uint8 ``(H, W, 3)``: a goal image for planning."""
    from wm_env.dataset.lerobot import LeRobotDataset

    if not isinstance(dataset, LeRobotDataset):
        dataset = LeRobotDataset(dataset)
    return dataset.frames(int(episode), camera)[-1]


def start_goal(
    start: Start, dataset: LeRobotDataset | str | os.PathLike, camera: str = "image"
) -> np.ndarray:
    """The goal image of a :class:`~wm_env.envs.starts.Start` loaded from a LeRobot dataset.

    The start's episode (``start.meta["episode"]``) ends in its goal: its last frame.
    """
    if "episode" not in start.meta:
        raise ValueError(
            f"start {start.start_id!r} does not come from a dataset episode; give a goal image instead"
        )
    return episode_goal(dataset, start.meta["episode"], camera)


# ---------------------------------------------------------------------- the MPC agent


def own_copy(model: WorldModel) -> WorldModel:
    """A runtime with its own episode state that shares ``model``'s frozen weights."""
    from wm_env.world_model import WorldModel

    return WorldModel(
        model.bundle,
        model.config,
        model.encoder,
        model.adapter,
        model.pixel_decoder,
        model.dit,
        model.scheduler,
        model.device,
        num_steps=model.num_steps,
        use_cache=model.use_cache,
        dtype=model.dtype,
        temperature=model.temperature,
        residual_decoding=model.residual_decoding,
    )


class CEMPolicy:
    """Model-predictive control with CEM in a world model, towards a goal image.

    At each planning step the policy resets its own world model from the last ``history``
    frames it observed (it never sees the env's internal state), plans ``config.horizon``
    actions with :func:`plan_in_world_model` and uses the first ``replan_every`` of them. With
    ``chunk=False`` (default) it returns them one per :meth:`act` call and sees every frame;
    with ``chunk=True`` it returns them as one ``(replan_every, 7)`` chunk, and (when
    ``replan_every > 1``) plans from the latest frame alone, since the frames in between are not
    observed. The unused tail of a plan warm-starts the next one.

    Args:
        model: a :class:`~wm_env.world_model.WorldModel` (its weights are shared, its state is
            not) or a bundle directory (loaded with ``model_options``; default
            ``models/default``).
        goal: uint8 ``(H, W, 3)`` goal image; or :meth:`set_goal`, or ``obs["goal_image"]``; or
            ``"expert"``: each start's goal is the last frame of the full-quality expert's
            episode from it in the sim (:meth:`for_start`, as the leaderboard runner calls it),
            so the agent can run in a suite of sim starts next to other policies.
        config: CEM settings (samples, elites, iterations, horizon, bounds, cost, ...), or a
            dict of them (as a suite file gives).
        replan_every: actions executed per plan (``1..horizon``).
        chunk: return each plan's actions as one chunk instead of one per call.
        seed: seeds the sampling and the model noise (the policy is deterministic per seed).
        max_rollouts: at most this many rollouts per model call (memory bound).
        warm_start: start each plan from the previous plan's unused tail (else from zeros).
    """

    name = "cem"

    def __init__(
        self,
        model: WorldModel | str | os.PathLike = "models/default",
        goal: np.ndarray | str | None = None,
        config: CEMConfig | dict[str, Any] | None = None,
        replan_every: int = 1,
        chunk: bool = False,
        seed: int = 0,
        max_rollouts: int | None = None,
        warm_start: bool = True,
        **model_options: Any,
    ) -> None:
        from wm_env.world_model import WorldModel

        if isinstance(config, dict):  # from a suite file
            config = CEMConfig(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
            )
        self.config = config or CEMConfig()
        if not 1 <= replan_every <= self.config.horizon:
            raise ValueError(
                f"replan_every must be in [1, horizon={self.config.horizon}]; got {replan_every}"
            )
        if max_rollouts is not None and max_rollouts < 1:
            raise ValueError(f"max_rollouts must be >= 1 or None; got {max_rollouts}")
        if isinstance(model, WorldModel):
            if model_options:
                raise ValueError(
                    f"model options {sorted(model_options)} need a bundle path, not a loaded model"
                )
            self.model = own_copy(model)
        else:
            self.model = WorldModel.from_pretrained(model, **model_options)
        self.replan_every, self.chunk = int(replan_every), bool(chunk)
        self.max_rollouts, self.warm_start = max_rollouts, bool(warm_start)
        self.rng = np.random.default_rng(seed)
        self.goal_latents: torch.Tensor | None = None  # (1, L, D)
        self.last_plan: np.ndarray | None = None  # (H, 7)
        self.last_info: dict[str, Any] = {}
        self._frames: deque[np.ndarray] = deque(maxlen=self.model.history)
        self._queue: list[np.ndarray] = []
        self._next_mean: np.ndarray | None = None
        self.goal_source: str | None = None
        if isinstance(goal, str):
            self.goal_source = lookup("goal source", goal, {g: g for g in GOAL_SOURCES})
        elif goal is not None:
            self.set_goal(goal)

    def for_start(self, task: str, seed: int) -> CEMPolicy:
        """This agent for one sim start ``(task, seed)``: an own copy (plans and frames are per
        episode); with ``goal="expert"`` it plans towards that start's expert goal image."""
        from policies.expert_plan import expert_final_frame

        policy = copy.deepcopy(self)
        if self.goal_source == "expert":
            policy.set_goal(expert_final_frame(task, seed, resolution=max(self.model.image_size)))
        return policy

    def _model_frame(self, image: np.ndarray) -> np.ndarray:
        from wm_env.envs.starts import resize_frames

        return np.ascontiguousarray(resize_frames(image, tuple(self.model.image_size)))

    def set_goal(self, image: np.ndarray) -> None:
        """Plan towards uint8 ``(H, W, 3)`` ``image`` (resized to the model's frames)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"goal image must be uint8 (H, W, 3); got {image.dtype} {image.shape}")
        self.goal_latents = self.model.encode(self._model_frame(image)[None])  # (1, L, D)
        self._queue, self._next_mean = [], None

    def reset(self, instruction: str) -> None:
        """Start an episode: forget the observed frames and the current plan (keep the goal)."""
        check_instruction(instruction)
        self._frames.clear()
        self._queue, self._next_mean, self.last_plan = [], None, None

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """float32 ``(7,)`` (or ``(replan_every, 7)`` with ``chunk=True``) planned actions."""
        image, _ = check_observation(obs)
        if obs.get("goal_image") is not None:
            self.set_goal(obs["goal_image"])
        if self.goal_latents is None:
            raise ValueError(
                "CEMPolicy has no goal: pass goal=..., call set_goal(image), or put 'goal_image' in the observation"
            )
        if self.chunk and self.replan_every > 1:
            self._frames.clear()  # the frames between chunks are not seen: no valid history
        self._frames.append(self._model_frame(image))
        if self.chunk:
            return self._plan()[: self.replan_every]
        if not self._queue:
            self._queue = list(self._plan()[: self.replan_every])
        return self._queue.pop(0)

    def _plan(self) -> np.ndarray:
        """Plan from the observed frames; return float32 ``(H, 7)``."""
        start = time.perf_counter()
        frames = np.stack(self._frames)[None]  # (1, l, H, W, 3)
        self.model.reset(frames, seed=int(self.rng.integers(2**31 - 1)))
        init = self._next_mean if self.warm_start else None
        plan, info = plan_in_world_model(
            self.model, self.goal_latents, self.config, self.rng, init, self.max_rollouts
        )
        plan = plan[0]  # (H, 7)
        m = self.replan_every
        self._next_mean = np.concatenate([plan[m:], np.zeros((m, ACTION_DIM), np.float32)])
        self.last_plan = plan
        self.last_info = {
            "best_cost": float(info["best_cost"][0]),
            "seconds": time.perf_counter() - start,
            "evaluations": info["evaluations"],
        }
        return plan
