"""The batched vector env: N world-model episodes advanced by one batched model call per step.

``gym.make_vec("wm_env/WorldModel-v0", num_envs=N, vectorization_mode="vector_entry_point",
model=..., starts=...)`` builds it. It follows Gymnasium 1.x next-step autoreset: the step after
an episode ends resets that sub-env (its action is ignored) and returns the reset observation.
Sub-env ``i`` seeded with ``seed + i`` draws its starts and noise exactly as a single
``WorldModelEnv`` reset with ``seed + i`` does, so both give the same frames (up to one grey
level of floating-point rounding between batch compositions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from wm_env.envs.starts import StartSet
from wm_env.envs.world_model_env import load_world_model, pick_start, start_states
from wm_env.options import WorldModelOptions
from wm_env.spaces import action_space, observation_space


class WorldModelVectorEnv(VectorEnv):
    """``num_envs`` world-model episodes in one batch (see the module docstring).

    Arguments are those of :class:`~wm_env.envs.world_model_env.WorldModelEnv` plus
    ``num_envs`` and ``max_episode_steps`` (truncation, from the registration by default).
    Observations: ``image`` uint8 ``(N, H, W, 3)``, ``instruction`` a tuple of N strings.
    """

    metadata = {
        "render_modes": ["rgb_array"],
        "render_fps": 5,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int,
        model,
        starts,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        options: WorldModelOptions | dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1; got {num_envs}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']}; got {render_mode!r}"
            )
        self.model = load_world_model(model, WorldModelOptions.build(options, **settings))
        self.starts = StartSet.load(starts)
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.model.fps}
        height, width = self.model.image_size
        actions = self.model.config["actions"]
        self.single_observation_space = observation_space(
            height, width, state=self.model.state_space()
        )
        self.single_action_space = action_space(actions["low"], actions["high"])
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rngs: list[np.random.Generator] = [seeding.np_random()[0] for _ in range(num_envs)]
        self._instructions = [""] * num_envs
        self._start_ids = [""] * num_envs
        self._elapsed = np.zeros(num_envs, dtype=np.int64)
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._frames: np.ndarray | None = None

    # ------------------------------------------------------------------ episodes
    def _begin(
        self, indices: list[int], options: dict[str, Any] | None
    ) -> tuple[np.ndarray, list[int], np.ndarray | None]:
        """Pick starts for sub-envs ``indices`` with their own rngs; (frames, model seeds, robot
        states for a model that conditions on them)."""
        frames, seeds, starts = [], [], []
        for i in indices:
            sub_options = dict(options or {})
            if isinstance(sub_options.get("episode"), (list, tuple, np.ndarray)):
                sub_options["episode"] = sub_options["episode"][i]
            if (
                sub_options.get("frames") is not None
                and np.asarray(sub_options["frames"]).ndim == 5
            ):
                sub_options["frames"] = np.asarray(sub_options["frames"])[i]
                if isinstance(sub_options.get("instruction"), (list, tuple)):
                    sub_options["instruction"] = sub_options["instruction"][i]
                if sub_options.get("state") is not None and np.ndim(sub_options["state"]) == 2:
                    sub_options["state"] = np.asarray(sub_options["state"])[i]
            start = pick_start(self._rngs[i], self.starts, sub_options, self.model.image_size)
            seeds.append(int(self._rngs[i].integers(2**31 - 1)))
            frames.append(start.frames)
            starts.append(start)
            self._instructions[i] = start.instruction
            self._start_ids[i] = start.start_id
        history = max(f.shape[0] for f in frames)
        padded = [np.concatenate([np.repeat(f[:1], history - len(f), 0), f]) for f in frames]
        return np.stack(padded), seeds, start_states(self.model, starts)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ):
        """Reset every sub-env; ``seed`` int gives sub-env ``i`` the seed ``seed + i``."""
        # gymnasium seeds the vector env's own generator from an int only
        super().reset(seed=seed if isinstance(seed, int) else None)
        if seed is not None:
            seeds = (
                [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
            )
            if len(seeds) != self.num_envs:
                raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
            for i, s in enumerate(seeds):
                if s is not None:
                    self._rngs[i] = seeding.np_random(s)[0]
        everyone = list(range(self.num_envs))
        frames, model_seeds, states = self._begin(everyone, options)
        self.model.reset(frames, seed=model_seeds, states=states)
        self._frames = frames[:, -1].copy()
        self._elapsed[:] = 0
        self._autoreset[:] = False
        return self._observation(), self._infos(np.zeros(self.num_envs, bool), 0.0)

    def step(self, actions):
        if self._frames is None:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions, dtype=np.float32)
        expected = (self.num_envs, *self.single_action_space.shape)
        if actions.shape != expected:
            raise ValueError(f"actions must have shape {expected}; received shape {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("actions contain NaN or inf")
        low, high = self.single_action_space.low, self.single_action_space.high
        clipped_actions = np.clip(actions, low, high)
        clipped = np.any(clipped_actions != actions, axis=1)
        frames = self.model.step(clipped_actions)  # one batched call for every sub-env
        seconds = self.model.last_step_seconds
        self._elapsed += 1
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = (
            self._elapsed >= self.max_episode_steps
            if self.max_episode_steps
            else np.zeros(self.num_envs, bool)
        )
        restarted = np.flatnonzero(self._autoreset)
        if restarted.size:  # next-step autoreset: these sub-envs start over, their action ignored
            start_frames, seeds, states = self._begin(restarted.tolist(), None)
            frames[restarted] = start_frames[:, -1]
            self.model.reset_subset(restarted, start_frames, seed=seeds, states=states)
            self._elapsed[restarted] = 0
            truncated[restarted] = False
            clipped[restarted] = False
        self._frames = frames
        self._autoreset = terminated | truncated
        return self._observation(), rewards, terminated, truncated, self._infos(clipped, seconds)

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode == "rgb_array" and self._frames is not None:
            return tuple(self._frames.copy())
        return None

    # ------------------------------------------------------------------ views
    def _observation(self) -> dict[str, Any]:
        obs = {"image": self._frames.copy(), "instruction": tuple(self._instructions)}
        if self.model.uses_states:
            obs["state"] = self.model.latest_states
        return obs

    def _infos(self, clipped: np.ndarray, seconds: float) -> dict[str, Any]:
        every = np.ones(self.num_envs, dtype=bool)
        return {
            "action_clipped": clipped,
            "_action_clipped": every,
            "generation_seconds": np.full(self.num_envs, seconds),
            "_generation_seconds": every,
            "start_id": np.array(self._start_ids, dtype=object),
            "_start_id": every,
        }
