"""Scripted experts for every task family, and the quality knob that grades them.

An expert is closed-loop on privileged sim state (object poses, the end-effector pose): each
step it picks the current phase's target pose and outputs a 7-D delta action with a clipped
proportional law. The :class:`ExpertQuality` knob spreads true success from about 0 to about 1
with three realistic failure modes: action noise, acting on a wrong object, and giving up
early (releasing the cube mid-carry, or stopping a push half-way).

Pure numpy: importing this module does not import robosuite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from wm_env.sim.tasks import (
    CUBE_HALF,
    PUSH_TRAVEL,
    TABLE_TOP_Z,
    EpisodeSpec,
    direction_vector,
    get_family,
)

POS_GAIN = (
    12.0  # action units per metre of position error (1.0 = 5 cm target offset per control step)
)
ROT_GAIN = 2.0  # action units per radian of orientation error (1.0 = 0.5 rad per control step)
OPEN, CLOSE = -1.0, 1.0


@dataclass(frozen=True)
class ExpertQuality:
    """How well an expert performs.

    Attributes:
        noise_std: std of Gaussian noise added to the six motion dims of every action.
        wrong_target_prob: chance per episode of acting on a wrong object / direction.
        early_release_prob: chance per episode of giving up mid-task (release or stop pushing).
    """

    noise_std: float = 0.0
    wrong_target_prob: float = 0.0
    early_release_prob: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0; got {self.noise_std}")
        for name in ("wrong_target_prob", "early_release_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {value}")

    @classmethod
    def from_level(cls, level: float) -> ExpertQuality:
        """One scalar knob: 1.0 is the expert, 0.0 almost never succeeds."""
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"quality level must be in [0, 1]; got {level}")
        bad = 1.0 - level
        return cls(noise_std=0.5 * bad, wrong_target_prob=0.9 * bad, early_release_prob=0.9 * bad)


@dataclass
class PrivilegedState:
    """What an expert may look at: the true sim state."""

    eef_position: np.ndarray  # (3,)
    eef_rotation: np.ndarray  # (3, 3) world-from-gripper
    gripper_opening: float
    object_positions: dict[str, np.ndarray]  # name -> (3,)
    object_yaws: dict[str, float]
    grasped: dict[str, bool]


@dataclass
class Phase:
    """One step of a script: go to a target pose with the gripper set; end on a condition."""

    name: str
    target: Callable[[PrivilegedState], np.ndarray]  # -> (3,) eef target position
    gripper: float
    done: Callable[[PrivilegedState, int], bool]  # (state, steps spent in phase) -> bool
    yaw_of: str | None = None  # align the gripper with this object's yaw
    yaw: float | None = None  # or hold this yaw (radians from the home pose)
    speed: float = 1.0  # cap on the position action (1.0 = full speed)


def _rz(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _axis_angle(rotation: np.ndarray) -> np.ndarray:
    """Axis-angle vector ``(3,)`` of a rotation matrix ``(3, 3)``."""
    cos = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array(
        [
            rotation[2, 1] - rotation[1, 2],
            rotation[0, 2] - rotation[2, 0],
            rotation[1, 0] - rotation[0, 1],
        ]
    )
    return axis / (2.0 * np.sin(angle)) * angle


def _grasp_yaw(yaw: float) -> float:
    """A cube looks the same every 90 degrees: the equivalent yaw in [-45, 45) degrees."""
    return (yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4


def _near(target: Callable, tol: float) -> Callable[[PrivilegedState, int], bool]:
    return lambda s, _n: np.linalg.norm(target(s) - s.eef_position) < tol


def _near_or_after(
    target: Callable, tol: float, steps: int
) -> Callable[[PrivilegedState, int], bool]:
    near = _near(target, tol)
    return lambda s, n: near(s, n) or n >= steps


def _after(steps: int) -> Callable[[PrivilegedState, int], bool]:
    return lambda _s, n: n >= steps


class ScriptedExpert:
    """A closed-loop scripted expert for one episode spec.

    Args:
        quality: the quality knob.
        step_seconds: duration of one env step (grasp and release waits are in seconds).
    """

    def __init__(self, quality: ExpertQuality | None = None, step_seconds: float = 0.2) -> None:
        self.quality = quality or ExpertQuality()
        self.step_seconds = step_seconds
        self.phases: list[Phase] = []
        self.phase_index = 0
        self.steps_in_phase = 0
        self.home_rotation: np.ndarray | None = None
        self.acted_on: dict[str, str] = {}
        self.gives_up = False
        self.yaw = 0.0
        self._rng = np.random.default_rng(0)

    # ------------------------------------------------------------------ episode set-up
    def reset(self, spec: EpisodeSpec, state: PrivilegedState, rng: np.random.Generator) -> None:
        """Plan the phases of an episode; draw this episode's failure modes from ``rng``."""
        self._rng = rng
        family = get_family(spec.family)
        wrong = rng.random() < self.quality.wrong_target_prob
        self.gives_up = bool(rng.random() < self.quality.early_release_prob)
        roles = family.wrong_roles(spec, rng) if wrong else dict(spec.roles)
        self.acted_on = roles
        self.home_rotation = state.eef_rotation.copy()
        self.phases = self._plan(spec.family, roles, state)
        self.phase_index = 0
        self.steps_in_phase = 0
        self.yaw = 0.0

    def _wait_steps(self, seconds: float) -> int:
        return max(1, int(np.ceil(seconds / self.step_seconds)))

    def _plan(self, family: str, roles: dict[str, str], state: PrivilegedState) -> list[Phase]:
        if family == "push":
            return self._plan_push(roles, state)
        target = roles["target"]
        phases = self._plan_grasp(target)
        lift_z = TABLE_TOP_Z + 0.16

        def above(name: str, height: float) -> Callable[[PrivilegedState], np.ndarray]:
            return lambda s: s.object_positions[name] + np.array([0.0, 0.0, height])

        def lifted(s: PrivilegedState) -> np.ndarray:
            return np.array([*s.object_positions[target][:2], lift_z])

        if family == "lift":
            if self.gives_up:  # let go as soon as the cube is off the table
                phases.append(self._lift_then_drop(target))
            phases.append(Phase("hold", lifted, CLOSE, lambda s, n: False))
            return phases
        if family == "stack":
            base = roles["base"]
            drop_height = 2 * CUBE_HALF + 0.012
        elif family == "place":
            base = roles["bin"]
            drop_height = CUBE_HALF + 0.05  # the cube clears the 4 cm walls by 2 cm
        else:
            raise ValueError(f"no expert for family {family!r}")
        phases.append(
            Phase("lift", lifted, CLOSE, lambda s, n: s.eef_position[2] > lift_z - 0.03 or n > 12)
        )
        carry_height = drop_height + 0.09
        if self.gives_up:
            phases.append(self._release_midway(above(base, carry_height)))
        phases += [
            Phase(
                "carry",
                lambda s: np.array([*s.object_positions[base][:2], lift_z]),
                CLOSE,
                self._xy_near(base, 0.012),
                speed=0.6,  # a fast carry shakes a cube out of the fingers
            ),
            Phase("lower", above(base, drop_height), CLOSE, _near(above(base, drop_height), 0.012)),
            Phase("release", above(base, drop_height), OPEN, _after(self._wait_steps(0.5))),
            Phase("retreat", above(base, drop_height + 0.12), OPEN, lambda s, n: False),
        ]
        return phases

    def _xy_near(self, name: str, tol: float) -> Callable[[PrivilegedState, int], bool]:
        return lambda s, _n: np.linalg.norm(s.object_positions[name][:2] - s.eef_position[:2]) < tol

    def _plan_grasp(self, target: str) -> list[Phase]:
        def hover(s: PrivilegedState) -> np.ndarray:
            return s.object_positions[target] + np.array([0.0, 0.0, 0.10])

        def grip(s: PrivilegedState) -> np.ndarray:
            return s.object_positions[target] + np.array(
                [0.0, 0.0, -0.012]
            )  # deep: fingers below the centre

        return [
            # descend only once the hand is turned to the cube: open fingers brushing a corner
            # on the way down turn the cube out of the grasp
            Phase(
                "approach",
                hover,
                OPEN,
                lambda s, n: _near(hover, 0.015)(s, n) and self.rotation_error(s) < 0.06,
                yaw_of=target,
            ),
            # The proportional law leaves about 1 cm of steady-state error against contacts:
            # grasp when close, or after 1.6 s of descending at the latest.
            # slowly: a 6 cm cube leaves 1 cm per side in the open hand, so the descent must not
            # outrun the sideways tracking
            Phase(
                "descend",
                grip,
                OPEN,
                _near_or_after(grip, 0.012, self._wait_steps(2.0)),
                yaw_of=target,
                speed=0.35,
            ),
            Phase("grasp", grip, CLOSE, _after(self._wait_steps(0.5))),
        ]

    def _lift_then_drop(self, target: str) -> Phase:
        def up(s: PrivilegedState) -> np.ndarray:
            return np.array([*s.object_positions[target][:2], TABLE_TOP_Z + 0.16])

        return Phase(
            "lift-then-drop",
            up,
            CLOSE,
            lambda s, n: s.object_positions[target][2] > TABLE_TOP_Z + CUBE_HALF + 0.02,
        )

    def _release_midway(self, goal: Callable) -> Phase:
        start = {}

        def towards(s: PrivilegedState) -> np.ndarray:
            start.setdefault("p", s.eef_position.copy())
            return 0.5 * (start["p"] + goal(s))

        return Phase("carry-half", towards, CLOSE, _near(towards, 0.03))

    def _plan_push(self, roles: dict[str, str], state: PrivilegedState) -> list[Phase]:
        target = roles["target"]
        d = np.array([*direction_vector(roles["direction"]), 0.0])
        start = state.object_positions[target].copy()
        push_z = TABLE_TOP_Z + 0.015
        behind = CUBE_HALF + 0.03
        travel = PUSH_TRAVEL * (0.35 if self.gives_up else 1.0)
        # The Panda hand is long along its finger axis (world y at home): turn it across the
        # push direction so it does not sweep over the cube, and the closed fingers push flat.
        yaw = np.pi / 2 if abs(d[1]) > abs(d[0]) else 0.0

        def pre(s: PrivilegedState) -> np.ndarray:
            p = s.object_positions[target] - behind * d
            return np.array([p[0], p[1], push_z + 0.08])

        def down(s: PrivilegedState) -> np.ndarray:
            p = s.object_positions[target] - behind * d
            return np.array([p[0], p[1], push_z])

        def pushing(s: PrivilegedState) -> np.ndarray:
            cube = s.object_positions[target]
            return np.array([*(cube - (CUBE_HALF + 0.005) * d + 0.04 * d)[:2], push_z])

        def pushed(s: PrivilegedState, n: int) -> bool:
            return float(np.dot(s.object_positions[target] - start, d)) >= travel or n > 40

        return [
            Phase("pre-push", pre, CLOSE, _near(pre, 0.015), yaw=yaw),
            Phase("lower", down, CLOSE, _near(down, 0.012), yaw=yaw),
            Phase("push", pushing, CLOSE, pushed, yaw=yaw),
            Phase(
                "retreat",
                lambda s: s.eef_position * [1, 1, 0] + [0, 0, push_z + 0.12],
                CLOSE,
                lambda s, n: False,
            ),
        ]

    # ------------------------------------------------------------------ control
    def rotation_error(self, state: PrivilegedState) -> float:
        """Angle (radians) between the hand and the orientation the expert is steering to."""
        goal = _rz(self.yaw) @ self.home_rotation
        return float(np.linalg.norm(_axis_angle(goal @ state.eef_rotation.T)))

    @property
    def phase(self) -> str:
        """Name of the phase the expert is in."""
        return self.phases[self.phase_index].name

    def act(self, state: PrivilegedState) -> np.ndarray:
        """float32 ``(7,)`` action in [-1, 1] for the current state."""
        if not self.phases:
            raise RuntimeError("call reset(spec, state, rng) before act()")
        phase = self.phases[self.phase_index]
        while phase.done(state, self.steps_in_phase) and self.phase_index + 1 < len(self.phases):
            self.phase_index += 1
            self.steps_in_phase = 0
            phase = self.phases[self.phase_index]
        self.steps_in_phase += 1
        action = np.zeros(7)
        error = phase.target(state) - state.eef_position
        action[:3] = np.clip(POS_GAIN * error, -phase.speed, phase.speed)
        if phase.yaw_of:  # align with the object; later phases keep the last alignment
            self.yaw = _grasp_yaw(state.object_yaws[phase.yaw_of])
        elif phase.yaw is not None:
            self.yaw = phase.yaw
        goal_rotation = _rz(self.yaw) @ self.home_rotation
        action[3:6] = ROT_GAIN * _axis_angle(goal_rotation @ state.eef_rotation.T)
        action[6] = phase.gripper
        if self.quality.noise_std > 0:
            action[:6] += self._rng.normal(0.0, self.quality.noise_std, size=6)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
