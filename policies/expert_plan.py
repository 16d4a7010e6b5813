"""Graded policies that run in both worlds: the sim experts' open-loop plans, replayed blind.

For a seeded layout (task family + seed) the scripted expert with a quality level
(:class:`wm_env.sim.experts.ExpertQuality`) is run closed-loop on a copy of the sim's start
state (:func:`wm_env.sim.rollout.open_loop_plan`); its action sequence becomes a fixed plan that
:class:`ExpertPlanPolicy` replays whatever it observes. In the sim the plan reproduces the
expert's episode exactly; in a world model it is a policy of known quality that uses no
privileged state at run time. Quality 1.0 nearly always succeeds in the sim; lower levels add
action noise, wrong targets and giving up (the same knob as the dataset's experts).

Plans need the sim only once: they are cached on disk as ``.npz`` files keyed by family, seed,
quality, length, expert seed and a version (a hash of the sim's source), so leaderboards reuse
them without building a simulator.

Usage::

    policy = ExpertPlanPolicy.planned("lift", seed=3, quality=0.7)  # one start
    prototype = ExpertPlanPolicy(quality=0.7)  # a leaderboard entry: specialised per start
    policy = prototype.for_start("lift", 3)
    policy = ExpertPlanPolicy.from_plan(actions)  # any (T, 7) action sequence
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from policies.base import check_action, check_instruction, check_observation
from wm_env.sim.experts import ExpertQuality
from wm_env.sim.tasks import get_family

PLAN_VERSION = 1  # bump when the plan format or the planning procedure changes
DEFAULT_STEPS = 40  # the world-model env's episode length
CACHE_ENV = "WMGYM_PLAN_CACHE"
_SIM_SOURCES = ("env.py", "experts.py", "rollout.py", "scene.py", "tasks.py")
# one sim per (family, resolution) per process (a build takes seconds)
_ENVS: dict[tuple[str, int], Any] = {}


def default_cache_dir() -> Path:
    """``$WMGYM_PLAN_CACHE``, else ``~/.cache/wm_gym/expert_plans``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "wm_gym" / "expert_plans")


def plan_version() -> str:
    """``PLAN_VERSION`` plus a hash of the sim's source: a changed expert invalidates caches."""
    import wm_env.sim

    root = Path(wm_env.sim.__file__).parent
    digest = hashlib.sha256()
    for name in _SIM_SOURCES:
        digest.update((root / name).read_bytes())
    return f"v{PLAN_VERSION}-{digest.hexdigest()[:12]}"


def _sim_env(family: str, resolution: int = 64):
    if (family, resolution) not in _ENVS:
        import gymnasium as gym

        import wm_env

        _ENVS[family, resolution] = gym.make(wm_env.sim_env_id(family), resolution=resolution)
    return _ENVS[family, resolution]


@functools.cache
def expert_final_frame(
    family: str, seed: int, resolution: int = 64, num_steps: int = DEFAULT_STEPS
) -> np.ndarray:
    """The last frame, uint8 ``(resolution, resolution, 3)``, of the full-quality expert's
    episode from the sim's start ``(family, seed)``: the scene with the task done (a goal
    image for planners). The plan is cached like :meth:`ExpertPlanPolicy.for_start`'s; the
    replay in the sim is exact, so the frame is the same on every call (and is cached per
    process, read-only: a suite asks for each start's goal once per episode)."""
    family = get_family(family).name
    plan = ExpertPlanPolicy(quality=1.0, num_steps=num_steps).for_start(family, seed).plan
    env = _sim_env(family, resolution)
    obs, _ = env.reset(seed=int(seed))
    for action in plan:
        obs, *_ = env.step(action)
    frame = np.array(obs["image"])
    frame.flags.writeable = False
    return frame


def compute_plan(
    family: str,
    quality: float,
    num_steps: int = DEFAULT_STEPS,
    seed: int | None = None,
    start: dict[str, Any] | None = None,
    expert_seed: int | None = None,
    env=None,
) -> tuple[np.ndarray, str]:
    """Plan in the sim: float32 ``(num_steps, 7)`` actions and the episode's instruction.

    The layout is the sim's reset with ``seed`` (the leaderboard's starts), or a recorded
    ``start`` state (``env.unwrapped.start_state()``, a dataset episode's ``meta["start"]``).
    The expert's failure draws use ``expert_seed`` (default ``seed + 1``, as ``wmgym data
    collect`` does; 1 for a recorded start). ``env``: a sim env of ``family`` to plan in
    (default: one built once per process); it is reset.
    """
    from wm_env.sim.rollout import open_loop_plan

    if (seed is None) == (start is None):
        raise ValueError("give exactly one of seed and start")
    if env is None:
        env = _sim_env(family)
    elif env.unwrapped.family.name != family:
        raise ValueError(f"env runs {env.unwrapped.family.name!r}, not {family!r}")
    if start is not None:
        obs, _ = env.reset(options={"start": start})
    else:
        obs, _ = env.reset(seed=int(seed))
    if expert_seed is None:
        expert_seed = 1 if seed is None else int(seed) + 1
    plan = open_loop_plan(env, ExpertQuality.from_level(quality), expert_seed, num_steps)
    return plan, obs["instruction"]


class ExpertPlanPolicy:
    """Replays a fixed plan of actions, one per ``act`` call, ignoring what it observes.

    Without a plan it is a *prototype* for a leaderboard: :meth:`for_start` makes the planned
    policy of one start. After the plan's last action it holds still (zero motion, the last
    gripper command).

    Args:
        quality: expert quality level in [0, 1] of the plans :meth:`for_start` makes.
        plan: float ``(T, 7)`` actions to replay (``None``: a prototype).
        num_steps: length of the plans :meth:`for_start` makes.
        cache_dir: where plans are cached (default :func:`default_cache_dir`; ``False``: no cache).
        name: the policy's name in results (default ``expert_plan_q<quality>``).
        instruction: the instruction of the planned episode (informational).
    """

    def __init__(
        self,
        quality: float = 1.0,
        plan: np.ndarray | None = None,
        num_steps: int = DEFAULT_STEPS,
        cache_dir: str | os.PathLike | bool | None = None,
        name: str | None = None,
        instruction: str | None = None,
    ) -> None:
        ExpertQuality.from_level(quality)  # validates the range
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1; got {num_steps}")
        self.quality = float(quality)
        self.num_steps = int(num_steps)
        self.cache_dir = cache_dir
        self.plan = None if plan is None else check_action(plan, name="plan")
        self.name = name or f"expert_plan_q{self.quality:g}"
        self.uses_image = False  # an open-loop plan: the observation is only validated
        self.instruction = instruction
        self._t = 0

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_plan(cls, plan: np.ndarray, name: str = "expert_plan") -> ExpertPlanPolicy:
        """A policy that replays ``plan`` (float ``(T, 7)``)."""
        return cls(plan=plan, name=name)

    @classmethod
    def planned(
        cls,
        family: str,
        seed: int,
        quality: float = 1.0,
        num_steps: int = DEFAULT_STEPS,
        cache_dir: str | os.PathLike | bool | None = None,
        expert_seed: int | None = None,
        env=None,
    ) -> ExpertPlanPolicy:
        """The plan of the layout ``env.reset(seed=seed)`` of ``family`` at ``quality``."""
        return cls(quality, num_steps=num_steps, cache_dir=cache_dir).for_start(
            family, seed, expert_seed=expert_seed, env=env
        )

    def for_start(
        self, family: str, seed: int, expert_seed: int | None = None, env=None
    ) -> ExpertPlanPolicy:
        """The planned policy of the start ``(family, seed)`` at this prototype's quality.

        The plan is read from the cache when there, else computed in the sim (seconds) and
        cached. The leaderboard runner calls this once per start. ``env``: a sim env of
        ``family`` to plan in (default: one built once per process).
        """
        family = get_family(family).name
        expert_seed = int(seed) + 1 if expert_seed is None else int(expert_seed)
        key = f"{family}-seed{int(seed)}-q{self.quality:g}-n{self.num_steps}-e{expert_seed}"
        plan, instruction = self._cached(
            key,
            lambda: compute_plan(
                family, self.quality, self.num_steps, seed=seed, expert_seed=expert_seed, env=env
            ),
        )
        return self._with_plan(plan, instruction)

    def for_state(self, start: dict[str, Any], expert_seed: int = 1, env=None) -> ExpertPlanPolicy:
        """The planned policy of a recorded start state (e.g. a dataset episode's
        ``meta["start"]``, the first frame a world-model env starts from)."""
        family = get_family(start["spec"]["family"]).name
        digest = hashlib.sha256(json.dumps(start, sort_keys=True).encode()).hexdigest()[:16]
        key = f"{family}-start{digest}-q{self.quality:g}-n{self.num_steps}-e{expert_seed}"
        plan, instruction = self._cached(
            key,
            lambda: compute_plan(
                family, self.quality, self.num_steps, start=start, expert_seed=expert_seed, env=env
            ),
        )
        return self._with_plan(plan, instruction)

    def _with_plan(self, plan: np.ndarray, instruction: str) -> ExpertPlanPolicy:
        return type(self)(
            self.quality,
            plan=plan,
            num_steps=self.num_steps,
            cache_dir=self.cache_dir,
            name=self.name,
            instruction=instruction,
        )

    def _cached(self, key: str, compute) -> tuple[np.ndarray, str]:
        if self.cache_dir is False:
            return compute()
        root = Path(default_cache_dir() if self.cache_dir in (None, True) else self.cache_dir)
        path = root / f"{key}-{plan_version()}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as stored:
                    return stored["plan"].astype(np.float32), str(stored["instruction"])
            except (OSError, ValueError, KeyError):
                pass  # an unreadable cache entry is recomputed and rewritten
        plan, instruction = compute()
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, plan=plan, instruction=np.array(instruction))
        os.replace(tmp, path)
        return plan, instruction

    # -- Policy ---------------------------------------------------------------------------------
    def reset(self, instruction: str) -> None:
        """Restart the plan from its first action."""
        check_instruction(instruction)
        self._t = 0

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """The plan's next action, float32 ``(7,)`` (the observation is only validated)."""
        check_observation(obs, image=False)
        if self.plan is None:
            raise ValueError(
                f"{self.name} has no plan: build one with for_start(family, seed) or from_plan"
            )
        if self._t < len(self.plan):
            action = self.plan[self._t].copy()
        else:  # past the plan: hold still with the last gripper command
            action = np.zeros(7, dtype=np.float32)
            action[-1] = self.plan[-1, -1]
        self._t += 1
        return action
