"""``wm_env/WorldModel-v0``: a trained world model as a Gymnasium environment."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from wm_env.envs.starts import Start, StartSet, checked_state, resize_frames
from wm_env.options import WorldModelOptions
from wm_env.spaces import action_space, checked_instruction, observation_space, validate_action


@dataclass(frozen=True, eq=False)
class Timing:
    """A wall-clock measurement in ``info`` (``float(timing)`` gives seconds).

    Timings are measurements, not environment state: any two compare equal, so an env's
    ``info`` stays deterministic for a given seed (Gymnasium's ``check_env`` requires that).
    """

    seconds: float

    def __float__(self) -> float:
        return self.seconds

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timing)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Timing({self.seconds:.4f} s)"


def load_world_model(model, options: WorldModelOptions | None = None):
    """A :class:`~wm_env.world_model.WorldModel` from a bundle path (or the instance itself)."""
    from wm_env.world_model import WorldModel

    options = options or WorldModelOptions()
    if isinstance(model, WorldModel):
        ignored = options.non_defaults()
        if str(model.device) == options.device:
            ignored.pop("device", None)
        if ignored:
            settings = ", ".join(f"{name}={value!r}" for name, value in ignored.items())
            raise ValueError(
                f"{settings} cannot change a loaded WorldModel; pass the bundle directory "
                f"instead, or WorldModel.from_pretrained(bundle, {settings})"
            )
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be a bundle directory or a WorldModel; got {type(model).__name__}"
        )
    return WorldModel.from_pretrained(model, options)


def pick_start(
    rng: np.random.Generator,
    starts: StartSet,
    options: dict[str, Any] | None,
    image_size: tuple[int, int],
) -> Start:
    """The start an episode uses: ``options["frames"]`` (+ ``"instruction"``, and ``"state"``
    for models that condition on the robot's state), ``options["episode"]``, or one drawn from
    ``rng``. Frames are resized to the model's image size."""
    options = dict(options or {})
    unknown = set(options) - {"frames", "instruction", "episode", "state"}
    if unknown:
        raise ValueError(
            f"unknown reset options {sorted(unknown)}; valid: episode, frames, instruction, state"
        )
    if options.get("frames") is not None:
        frames = np.asarray(options["frames"])
        if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
            raise ValueError(
                f"options['frames'] must be uint8 (H, W, 3) or (l, H, W, 3); got {frames.dtype} {frames.shape}"
            )
        if options.get("instruction") is None:
            raise ValueError(
                "reset with options['frames'] also needs a non-empty options['instruction']"
            )
        instruction = checked_instruction(options["instruction"], "options['instruction']")
        state = checked_state(options.get("state"), "options['state']")
        start = Start(
            frames if frames.ndim == 4 else frames[None], instruction, "given", state=state
        )
    elif options.get("episode") is not None:
        episode = options["episode"]
        if isinstance(episode, bool) or not isinstance(episode, (int, np.integer)):
            raise ValueError(f"options['episode'] must be an integer index; got {episode!r}")
        start = starts[int(episode)]
    else:
        start = starts[int(rng.integers(len(starts)))]
    return Start(
        resize_frames(start.frames, image_size),
        start.instruction,
        start.start_id,
        start.meta,
        start.state,
    )


def start_states(model, starts: list[Start]) -> np.ndarray | None:
    """The robot states ``(B, S)`` of ``starts`` for a model that conditions on them (else None),
    or an error naming the start that has none."""
    if not model.uses_states:
        return None
    missing = [start.start_id for start in starts if start.state is None]
    if missing:
        raise ValueError(
            f"{model.bundle} conditions on the robot's state, and start {missing[0]!r} has none: "
            "start from a dataset that records observation.state, give 'state' in the start's "
            "JSON, or reset(options={'frames': ..., 'instruction': ..., 'state': ...})"
        )
    return np.stack([start.state for start in starts])


class WorldModelEnv(gym.Env):
    """A robot policy's environment simulated by a trained world model.

    ## Description
    Each step the world model generates the next camera frame from the history and the action
    (one batched model call per denoising step); the observation is that frame, decoded, plus
    the episode's instruction. The model, the start states and (through wrappers) the judge are
    given to the env, never built from hidden defaults.

    ## Action Space
    ``Box(low, high, (7,), float32)``: (dx, dy, dz, droll, dpitch, dyaw, gripper) in the units of
    the dataset the model was trained on; bounds are the dataset's min/max action statistics
    stored in the bundle. Out-of-bounds actions are clipped and flagged in
    ``info["action_clipped"]``; NaN/inf or wrong-shape actions raise ``ValueError``.

    ## Observation Space
    ``Dict(image=Box(uint8, (H, W, 3)), instruction=Text)``, as the ground-truth sim envs
    ``wm_env/Tabletop-*-v0``, so a policy runs unchanged in both; with a model that carries the
    robot's state, also ``state=Box(float32, (S,))`` (the sim's proprio layout), as the sim has.

    ## Rewards
    0 (a judge wrapper adds success rewards).

    ## Starting State
    A start state (history frames + instruction) drawn with ``self.np_random`` from ``starts``,
    or ``options={"episode": i}``, or ``options={"frames": ..., "instruction": ...}``. The first
    observation is the real start frame.

    ## Episode End
    Never terminates by itself; the time limit comes from the registration
    (``max_episode_steps=40``, as in WorldGym).

    ## Arguments
    model (bundle directory or WorldModel), starts (dataset dir, PNG+JSON folder, list of
    frames/dicts, or StartSet), render_mode (``"rgb_array"``), and how the model runs: a
    :class:`wm_env.options.WorldModelOptions` (``options=``), or its fields by name (device,
    num_steps, temperature, dtype, decoder, use_cache, compile, residual_decoding), e.g.
    ``gym.make("wm_env/WorldModel-v0", model=..., starts=..., num_steps=2, dtype="bf16")``.

    ``info`` of every step: ``latent`` (L, D) of the new frame, ``generation_seconds``,
    ``denoising_steps``, ``action_clipped``, ``start_id``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(
        self,
        model,
        starts,
        render_mode: str | None = None,
        options: WorldModelOptions | dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']}; got {render_mode!r}"
            )
        self.model = load_world_model(model, WorldModelOptions.build(options, **settings))
        self.starts = StartSet.load(starts)
        self.render_mode = render_mode
        height, width = self.model.image_size
        self.observation_space = observation_space(height, width, state=self.model.state_space())
        actions = self.model.config["actions"]
        self.action_space = action_space(actions["low"], actions["high"])
        self.metadata = {**self.metadata, "render_fps": self.model.fps}
        self._start: Start | None = None
        self._frame: np.ndarray | None = None

    def load_start(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """What ``reset(seed, options)`` would start from, without resetting (for wrappers that
        edit start frames): ``{"frames": (l, H, W, 3), "instruction": str, "start_id": str}``."""
        rng = np.random.default_rng(seed) if seed is not None else copy.deepcopy(self.np_random)
        start = pick_start(rng, self.starts, options, self.model.image_size)
        return {
            "frames": start.frames,
            "instruction": start.instruction,
            "start_id": start.start_id,
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._start = pick_start(self.np_random, self.starts, options, self.model.image_size)
        model_seed = int(self.np_random.integers(2**31 - 1))
        states = start_states(self.model, [self._start])
        self.model.reset(self._start.frames[None], seed=[model_seed], states=states)
        self._frame = self._start.frames[-1]
        obs = self._observation(self._frame.copy())
        return obs, {"start_id": self._start.start_id, "model_seed": model_seed}

    def _observation(self, frame: np.ndarray) -> dict[str, Any]:
        obs = {"image": frame, "instruction": self._start.instruction}
        if self.model.uses_states:
            obs["state"] = self.model.latest_states[0]
        return obs

    def step(self, action):
        if self._start is None:
            raise RuntimeError("call reset() before step()")
        action, clipped = validate_action(action, self.action_space)
        frame = self.model.step(action[None])[0]
        self._frame = frame
        obs = self._observation(frame)
        info = {
            "latent": self.model.latest_latents[0].cpu().numpy(),
            "generation_seconds": Timing(self.model.last_step_seconds),
            "denoising_steps": self.model.num_steps,
            "action_clipped": clipped,
            "start_id": self._start.start_id,
        }
        return obs, 0.0, False, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array" and self._frame is not None:
            return self._frame.copy()
        return None
