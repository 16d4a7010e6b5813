"""The robosuite scene behind every tabletop task: a Panda on a table with a fixed object pool.

The model (MJCF) is built once per env instance. Everything that varies between episodes
(which objects are used, their colors and poses) changes through the compiled model's
``geom_rgba`` and the objects' free joints, so a reset never recompiles the model. Objects that
an episode does not use are parked off the table, out of every camera's view.

Only :mod:`wm_env.sim.env` should need this module; it imports robosuite at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering without a display

import logging  # noqa: E402

# robosuite warns at import (no private macro file, optional robots) and on every env build
# (unused controller parts); a filter on its logger outlives the levels robosuite sets itself.
logging.getLogger("robosuite_logs").addFilter(lambda record: record.levelno >= logging.ERROR)

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from robosuite.controllers import load_composite_controller_config  # noqa: E402
from robosuite.environments.manipulation.manipulation_env import ManipulationEnv  # noqa: E402
from robosuite.models.arenas import TableArena  # noqa: E402
from robosuite.models.objects import (  # noqa: E402
    BallObject,
    Bin,
    BoxObject,
    CapsuleObject,
    CylinderObject,
)
from robosuite.models.tasks import ManipulationTask  # noqa: E402

from wm_env.sim.tasks import BIN_HALF, CUBE_HALF, DISTRACTOR_KINDS, TABLE_TOP_Z  # noqa: E402

BIN_WALL_HEIGHT = 0.04
PARK_POSITION = np.array([2.0, 2.0, 0.05])  # on the floor, far outside every camera

# Main camera: in front of the robot and to its right, looking down at the workspace so that
# the arm (at rest and at work) and every object are in view. An over-the-shoulder camera
# (BridgeV2) was tried and rejected: the Panda's elbow hides half the table.
# (position, look-at point, vertical field of view) in the world frame; the table centre is at (0, 0, 0.8) and the robot base
# at (-0.56, 0, 0.91), facing +x.
CAMERAS: dict[str, dict] = {
    "workspace": {"pos": (0.40, -0.46, 1.42), "lookat": (-0.05, 0.0, 0.88), "fovy": 32.0},
    "front": {"pos": (0.62, 0.0, 1.28), "lookat": (-0.05, 0.0, 0.82), "fovy": 45.0},
}
ROBOSUITE_CAMERAS = {"wrist": "robot0_eye_in_hand"}


def _look_at_quat(pos, lookat) -> list[float]:
    """Quaternion (wxyz) of a MuJoCo camera at ``pos`` looking at ``lookat``, world-up z.

    A MuJoCo camera looks along its -z axis with +y up, so the frame's columns are
    (right, up, -forward).
    """
    forward = np.asarray(lookat, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rotation = np.stack([right, up, -forward], axis=1)  # (3, 3), columns are the camera axes
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rotation.reshape(-1))
    return [float(q) for q in quat]


@dataclass(frozen=True)
class ObjectPool:
    """How many objects of each kind the scene holds (fixed per env instance)."""

    num_cubes: int = 3
    num_bins: int = 0
    num_distractor_slots: int = 0  # each slot holds one object of every distractor kind


class TabletopScene(ManipulationEnv):
    """A robosuite env with a table, a Panda (OSC_POSE) and a pool of cubes, bins, distractors.

    It has no task logic: layouts, colors and success live in :mod:`wm_env.sim.tasks`.
    Rendering goes through :meth:`render_camera` (shadows and reflections optional).
    """

    def __init__(
        self,
        pool: ObjectPool,
        control_freq: int = 20,
        shadows: bool = False,
        seed: int | None = None,
    ):
        self.pool = pool
        self.shadows = shadows
        self.table_full_size = (0.8, 0.8, 0.05)
        self.table_offset = np.array((0.0, 0.0, TABLE_TOP_Z - 0.0))
        controller = load_composite_controller_config(controller="BASIC", robot="Panda")
        super().__init__(
            robots="Panda",
            controller_configs=controller,
            initialization_noise=None,
            use_camera_obs=False,
            has_renderer=False,
            has_offscreen_renderer=True,
            control_freq=control_freq,
            horizon=10**9,
            ignore_done=True,
            hard_reset=False,
            seed=seed,
        )

    # ------------------------------------------------------------------ model
    def _load_model(self) -> None:
        super()._load_model()
        robot = self.robots[0]
        robot.robot_model.set_base_xpos(
            robot.robot_model.base_xpos_offset["table"](self.table_full_size[0])
        )
        arena = TableArena(table_full_size=self.table_full_size, table_offset=self.table_offset)
        arena.set_origin([0, 0, 0])
        for name, cam in CAMERAS.items():
            arena.set_camera(
                camera_name=name,
                pos=list(cam["pos"]),
                quat=_look_at_quat(cam["pos"], cam["lookat"]),
                camera_attribs={"fovy": str(cam["fovy"])},
            )
        grey = [0.5, 0.5, 0.5, 1.0]
        self.cubes = [
            BoxObject(name=f"cube{i}", size=[CUBE_HALF] * 3, rgba=grey, density=300.0)
            for i in range(self.pool.num_cubes)
        ]
        self.bins = [
            Bin(
                name=f"bin{i}",
                bin_size=(2 * BIN_HALF, 2 * BIN_HALF, BIN_WALL_HEIGHT),
                wall_thickness=0.008,
                transparent_walls=False,
                use_texture=False,
                density=5000.0,
                rgba=grey,
            )
            for i in range(self.pool.num_bins)
        ]
        self.distractors: dict[str, list] = {kind: [] for kind in DISTRACTOR_KINDS}
        for i in range(self.pool.num_distractor_slots):
            self.distractors["ball"].append(BallObject(name=f"ball{i}", size=[0.025], rgba=grey))
            self.distractors["cylinder"].append(
                CylinderObject(name=f"cylinder{i}", size=[0.022, 0.03], rgba=grey)
            )
            self.distractors["capsule"].append(
                CapsuleObject(name=f"capsule{i}", size=[0.018, 0.018], rgba=grey)
            )
        objects = (
            self.cubes
            + self.bins
            + [o for kind in DISTRACTOR_KINDS for o in self.distractors[kind]]
        )
        self.model = ManipulationTask(
            mujoco_arena=arena,
            mujoco_robots=[r.robot_model for r in self.robots],
            mujoco_objects=objects,
        )
        self._all_objects = objects

    def _setup_references(self) -> None:
        super()._setup_references()
        model = self.sim.model
        self.object_body_ids = {o.name: model.body_name2id(o.root_body) for o in self._all_objects}
        self.object_joint_names = {o.name: o.joints[0] for o in self._all_objects}
        self.object_visual_geom_ids = {
            o.name: [model.geom_name2id(g) for g in o.visual_geoms] for o in self._all_objects
        }
        self.object_contact_geoms = {o.name: list(o.contact_geoms) for o in self._all_objects}

    def _reset_internal(self) -> None:
        super()._reset_internal()
        for slot, name in enumerate(self.object_joint_names):
            self.park_object(name, slot)

    def reward(self, action=None) -> float:  # robosuite API; tasks compute success themselves
        return 0.0

    # ------------------------------------------------------------------ object control
    def place_object(self, name: str, position, yaw: float = 0.0) -> None:
        """Put object ``name`` at ``position`` (x, y, z of its centre) with a yaw about z."""
        quat = np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])  # wxyz
        self.sim.data.set_joint_qpos(
            self.object_joint_names[name], np.concatenate([position, quat])
        )
        self.sim.data.set_joint_qvel(self.object_joint_names[name], np.zeros(6))

    def park_object(self, name: str, slot: int) -> None:
        """Move an unused object to its own spot on the floor, outside every camera."""
        self.place_object(name, PARK_POSITION + np.array([0.2 * slot, 0.0, 0.0]))

    def set_object_color(self, name: str, rgba) -> None:
        """Recolor every visual geom of object ``name``."""
        for gid in self.object_visual_geom_ids[name]:
            self.sim.model.geom_rgba[gid] = rgba

    def object_position(self, name: str) -> np.ndarray:
        """World position ``(3,)`` of the object's root body."""
        return np.array(self.sim.data.body_xpos[self.object_body_ids[name]])

    def is_grasped(self, name: str) -> bool:
        """Whether both gripper fingers touch object ``name`` (robosuite's grasp check)."""
        return bool(
            self._check_grasp(
                gripper=self.robots[0].gripper, object_geoms=self.object_contact_geoms[name]
            )
        )

    # ------------------------------------------------------------------ robot state
    @property
    def eef_position(self) -> np.ndarray:
        """End-effector (grip site) position ``(3,)``."""
        return np.array(self.sim.data.site_xpos[self.robots[0].eef_site_id["right"]])

    @property
    def gripper_opening(self) -> float:
        """Distance between the two finger joints (about 0.08 open, 0 closed)."""
        qpos = self.sim.data.qpos[self.robots[0]._ref_gripper_joint_pos_indexes["right"]]
        return float(qpos[0] - qpos[1])

    def proprio(self) -> np.ndarray:
        """float32 ``(8,)``: eef xyz, eef quaternion (xyzw), gripper opening."""
        robot = self.robots[0]
        quat = np.array(self.sim.data.get_body_xquat(robot.robot_model.eef_name["right"]))[
            [1, 2, 3, 0]
        ]
        return np.concatenate([self.eef_position, quat, [self.gripper_opening]]).astype(np.float32)

    # ------------------------------------------------------------------ physics state
    def get_physics_state(self) -> np.ndarray:
        """The full MuJoCo integration state (qpos, qvel, act, warm-start, ctrl, time...)."""
        model, data = self.sim.model._model, self.sim.data._data
        size = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_INTEGRATION)
        state = np.empty(size, dtype=np.float64)
        mujoco.mj_getState(model, data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
        return state

    def set_physics_state(self, state: np.ndarray) -> None:
        """Restore a state from :meth:`get_physics_state` exactly (bit-for-bit replays)."""
        model, data = self.sim.model._model, self.sim.data._data
        expected = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_INTEGRATION)
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (expected,):
            raise ValueError(
                f"physics state has shape {state.shape}; this scene expects ({expected},)"
            )
        mujoco.mj_setState(model, data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(model, data)

    # ------------------------------------------------------------------ rendering
    def make_render_context_current(self) -> None:
        """Make this scene's GL context the current one (call before rendering through ``sim``).

        robosuite makes a context current only when it creates it, so with several scenes in one
        process a scene would render, and free its GL objects, in another scene's context: after
        that scene is closed, images come out garbled.
        """
        context = self.sim._render_context_offscreen if self.sim is not None else None
        if context is not None:
            context.gl_ctx.make_current()

    def close(self) -> None:
        self.make_render_context_current()  # robosuite frees GL objects in the current context
        super().close()

    def render_view(self, camera: str, height: int, width: int) -> np.ndarray:
        """uint8 ``(H, W, 3)`` image from a named camera, top row first."""
        name = ROBOSUITE_CAMERAS.get(camera, camera)
        self.make_render_context_current()
        image = self.sim.render(camera_name=name, width=width, height=height)
        context = self.sim._render_context_offscreen
        if context is not None and not self.shadows:
            flags = context.scn.flags
            if flags[mujoco.mjtRndFlag.mjRND_SHADOW] or flags[mujoco.mjtRndFlag.mjRND_REFLECTION]:
                flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
                image = self.sim.render(camera_name=name, width=width, height=height)
        return np.ascontiguousarray(image[::-1])  # MuJoCo renders bottom row first
