"""The ground-truth tabletop simulator as a Gymnasium environment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from wm_env.errors import UnknownNameError
from wm_env.sim.experts import PrivilegedState
from wm_env.sim.scene import ROBOSUITE_CAMERAS, ObjectPool, TabletopScene
from wm_env.sim.tasks import (
    DISTRACTOR_COLORS,
    TASK_COLORS,
    EpisodeSpec,
    get_family,
    sample_distractors,
    with_restarts,
)
from wm_env.spaces import (
    action_space,
    camera_key,
    check_resolution,
    observation_space,
    state_space,
    validate_action,
)

MAIN_CAMERA = "workspace"


def _spec_from(data: Any, where: str) -> EpisodeSpec:
    """An :class:`EpisodeSpec` from its dict, or a ValueError that says what is wrong."""
    try:
        return EpisodeSpec.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(
            f"{where} is not an episode spec ({type(error).__name__}: {error})"
        ) from None


class TabletopEnv(gym.Env):
    """Language-conditioned tabletop manipulation with a Panda arm (robosuite, OSC_POSE).

    ## Description
    One task family per env (``lift``, ``stack``, ``push``, ``place``). Every episode samples a
    layout of colored cubes (and bins), an instruction from the family's templates, and
    optionally distractor objects whose kinds and colors no task uses.

    ## Action Space
    ``Box(-1, 1, (7,), float32)``: (dx, dy, dz, droll, dpitch, dyaw, gripper) end-effector deltas
    in the robot base frame (1.0 = 5 cm / 0.5 rad per control step), gripper -1 open, +1 close.
    One env step holds the action for ``control_steps`` controller steps at ``control_freq``
    (defaults 4 at 20 Hz: a 5 Hz env, like BridgeV2). Out-of-range actions are clipped and
    flagged in ``info["action_clipped"]``; NaN/inf or wrong-shape actions raise ``ValueError``.

    ## Observation Space
    ``Dict(image=Box(uint8, (H, W, 3)), instruction=Text, state=Box(float32, (8,)))``, plus
    ``image_<camera>`` for each extra camera (``wrist``, ``front``). ``state`` is the robot's
    proprioception, as LeRobot and LIBERO envs give it: end-effector position (m, world frame),
    its quaternion (x, y, z, w) and the gripper opening (m; about 0.08 open, 0 closed)
    (:data:`wm_env.spaces.STATE_NAMES`). The main camera frames the workspace so that a cube is
    about 8-10 pixels wide at 64x64.

    ## Rewards
    1.0 on steps where the task's success predicate holds, else 0.0.

    ## Starting State
    The arm at its home pose; objects placed uniformly without overlap in the workspace. With
    ``options={"start": ...}`` (from :meth:`start_state`) the exact start of a recorded episode
    is restored; with ``options={"spec": ...}`` a given layout is used.

    ## Episode End
    Never terminates unless ``terminate_on_success``; the time limit comes from the
    registration (``max_episode_steps``). ``info["success"]`` is given every step.

    ## Arguments
    family, resolution (or height/width), extra_cameras, num_distractors, max_distractors
    (slots built into the scene; default num_distractors), control_freq, control_steps,
    shadows, terminate_on_success, render_mode (``"rgb_array"``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(
        self,
        family: str = "lift",
        resolution: int | None = 64,
        height: int | None = None,
        width: int | None = None,
        extra_cameras: Sequence[str] = (),
        num_distractors: int = 0,
        max_distractors: int | None = None,
        control_freq: int = 20,
        control_steps: int = 4,
        shadows: bool = False,
        terminate_on_success: bool = False,
        render_mode: str | None = None,
    ) -> None:
        self.family = get_family(family)
        self.height = int(height or resolution)
        self.width = int(width or resolution)
        check_resolution(self.height, self.width)
        valid_cameras = sorted(set(ROBOSUITE_CAMERAS) | {"front"})
        for camera in extra_cameras:
            if camera not in valid_cameras:
                raise UnknownNameError("camera", camera, valid_cameras)
        if control_steps < 1 or control_freq < 1:
            raise ValueError(
                f"control_freq and control_steps must be >= 1; got {control_freq}, {control_steps}"
            )
        if num_distractors < 0:
            raise ValueError(f"num_distractors must be >= 0; got {num_distractors}")
        max_distractors = num_distractors if max_distractors is None else max_distractors
        if max_distractors < num_distractors:
            raise ValueError(
                f"max_distractors ({max_distractors}) < num_distractors ({num_distractors})"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']}; got {render_mode!r}"
            )
        self.extra_cameras = tuple(extra_cameras)
        self.num_distractors = num_distractors
        self.control_steps = control_steps
        self.step_seconds = control_steps / control_freq
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": control_freq / control_steps}

        self.observation_space = observation_space(
            self.height, self.width, self.extra_cameras, state=state_space()
        )
        self.action_space = action_space(-1.0, 1.0)
        pool = ObjectPool(self.family.num_cubes, self.family.num_bins, max_distractors)
        self.scene = TabletopScene(pool, control_freq=control_freq, shadows=shadows)
        self.spec_: EpisodeSpec | None = None  # `spec` is taken by gymnasium's EnvSpec
        self._start_physics: np.ndarray | None = None
        self._frame: np.ndarray | None = None

    # ------------------------------------------------------------------ episodes
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"spec", "start", "num_distractors"}
        if unknown:
            raise ValueError(
                f"unknown reset options {sorted(unknown)}; valid: num_distractors, spec, start"
            )
        start = options.get("start")
        if start is not None and (
            not isinstance(start, dict) or not {"spec", "physics_state"} <= set(start)
        ):
            raise ValueError(
                "options['start'] must be a start state from env.start_state(): a dict with "
                f"'spec' and 'physics_state'; got {type(start).__name__} "
                f"{sorted(start) if isinstance(start, dict) else ''}"
            )
        count = options.get("num_distractors", self.num_distractors)
        slots = self.scene.pool.num_distractor_slots
        if (
            isinstance(count, bool)
            or not isinstance(count, (int, np.integer))
            or not 0 <= count <= slots
        ):
            raise ValueError(
                f"num_distractors must be an integer in [0, {slots}] (the scene has {slots} distractor "
                f"slots: max_distractors); got {count!r}"
            )
        if start is not None:
            spec = _spec_from(start["spec"], "options['start']['spec']")
        elif options.get("spec") is not None:
            spec = (
                options["spec"]
                if isinstance(options["spec"], EpisodeSpec)
                else _spec_from(options["spec"], "options['spec']")
            )
        else:
            spec = None
        self.scene.reset()
        if spec is None:
            spec = with_restarts(lambda rng: self._sample_spec(rng, count), self.np_random)
        if spec.family != self.family.name:
            raise ValueError(
                f"episode spec is for family {spec.family!r}; this env runs {self.family.name!r}"
            )
        self._apply(spec)
        if start is not None:
            self.scene.set_physics_state(np.asarray(start["physics_state"], dtype=np.float64))
        self._start_physics = self.scene.get_physics_state()
        self.spec_ = spec
        obs = self._observation()
        return obs, self._info(action_clipped=False)

    def _sample_spec(self, rng: np.random.Generator, num_distractors: int) -> EpisodeSpec:
        spec = self.family.sample(rng)
        spec.distractors = sample_distractors(
            rng,
            num_distractors,
            spec.objects,
            self.scene.pool.num_distractor_slots,
            self.family.keep_out(spec),
        )
        return spec

    def _apply(self, spec: EpisodeSpec) -> None:
        for obj in spec.objects + spec.distractors:
            if obj.name not in self.scene.object_joint_names:
                raise ValueError(f"episode uses object {obj.name!r}, which this scene's pool lacks")
            palette = DISTRACTOR_COLORS if obj in spec.distractors else TASK_COLORS
            self.scene.place_object(obj.name, np.array(obj.position), obj.yaw)
            self.scene.set_object_color(obj.name, palette[obj.color])
        self.scene.sim.forward()

    def step(self, action):
        if self.spec_ is None:
            raise RuntimeError("call reset() before step()")
        action, clipped = validate_action(action, self.action_space)
        for _ in range(self.control_steps):
            self.scene.step(action.astype(np.float64))
        obs = self._observation()
        info = self._info(action_clipped=clipped)
        reward = float(info["success"])
        terminated = bool(info["success"] and self.terminate_on_success)
        return obs, reward, terminated, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self._frame.copy() if self._frame is not None else None
        return None

    def close(self) -> None:
        self.scene.close()

    # ------------------------------------------------------------------ views of the state
    def _observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {"instruction": self.spec_.instruction, "state": self.scene.proprio()}
        for camera in (MAIN_CAMERA, *self.extra_cameras):
            obs[camera_key(camera, MAIN_CAMERA)] = self.scene.render_view(
                camera, self.height, self.width
            )
        self._frame = obs["image"]
        return obs

    def _info(self, action_clipped: bool) -> dict[str, Any]:
        return {
            "success": self.family.success(self.scene, self.spec_),
            "action_clipped": action_clipped,
            "proprio": self.scene.proprio(),
        }

    @property
    def episode_spec(self) -> EpisodeSpec:
        """The current episode's layout, instruction and roles."""
        if self.spec_ is None:
            raise RuntimeError("call reset() first")
        return self.spec_

    def start_state(self) -> dict[str, Any]:
        """JSON-serialisable start of the current episode; ``reset(options={"start": it})`` restores it."""
        return {"spec": self.episode_spec.to_dict(), "physics_state": self._start_physics.tolist()}

    def physics_state(self) -> np.ndarray:
        """The current full state (for :meth:`set_physics_state`).

        The MuJoCo integration state followed by each gripper's command (one value per finger
        actuator): robosuite integrates gripper actions into that command outside MuJoCo, so the
        steps after a restore depend on it.
        """
        commands = [
            np.broadcast_to(gripper.current_action, (len(gripper.actuators),))
            for gripper in self._grippers()
        ]
        return np.concatenate([self.scene.get_physics_state(), *commands]).astype(np.float64)

    def set_physics_state(self, state: np.ndarray) -> None:
        """Restore a state from :meth:`physics_state` within the current episode."""
        state = np.asarray(state, dtype=np.float64)
        end = len(state)
        for gripper in reversed(self._grippers()):
            size = len(gripper.actuators)
            gripper.current_action = state[end - size : end].copy()
            end -= size
        self.scene.set_physics_state(state[:end])

    def _grippers(self) -> list:
        grippers = self.scene.robots[0].gripper
        return [grippers[arm] for arm in sorted(grippers)]

    def privileged_state(self) -> PrivilegedState:
        """True object poses and the end-effector pose, for scripted experts."""
        scene = self.scene
        names = [o.name for o in self.episode_spec.objects + self.episode_spec.distractors]
        positions = {n: scene.object_position(n) for n in names}
        yaws = {}
        for n in names:
            w, x, y, z = scene.sim.data.body_xquat[scene.object_body_ids[n]]
            yaws[n] = float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))
        robot = scene.robots[0]
        rotation = np.array(scene.sim.data.site_xmat[robot.eef_site_id["right"]]).reshape(3, 3)
        return PrivilegedState(
            eef_position=scene.eef_position,
            eef_rotation=rotation,
            gripper_opening=scene.gripper_opening,
            object_positions=positions,
            object_yaws=yaws,
            grasped={n: scene.is_grasped(n) for n in names},
        )
