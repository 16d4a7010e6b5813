"""A judge that reads states out of frames and applies the sim's own task predicate to them.

The probe and the VLM say "success" or "failure" and cannot say why. This judge reads the
end effector, the gripper and every task object's class and position out of the frames with a
state read-out (:mod:`judges.state_readout`, ``wmgym train readout``: trained on true twin
frames only), rebuilds the episode's task from its instruction and its first frame, and applies
the family's success predicate (:mod:`wm_env.sim.tasks`) to what the last frame shows, as the
sim does at the end of an episode. Its rationale is the measurement the verdict rests on
("the red cube's centre is 4.1 cm above its resting height; lifted means 5.0 cm").

What it needs: square frames of the twin's main camera (the read-out's training view, resized to its
size) and one of our template instructions (:func:`wm_env.instructions.parse_instruction`). It
abstains, with the reason, on an instruction that is no template and on a task object the first
frame does not show. An object the last frame does not show (it faded or changed colour in a world
model's frames) fails the task: the predicate cannot hold for an object that is not there.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from judges.base import Verdict, check_judge_input
from judges.state_readout import (
    OBJECT_CLASSES,
    ReadoutScene,
    ReadStates,
    load_readout,
    object_class,
)
from wm_env.sim.tasks import (
    CUBE_HALF,
    LIFT_HEIGHT,
    PUSH_DISTANCE,
    TABLE_TOP_Z,
    EpisodeSpec,
    ObjectPlacement,
    direction_vector,
    get_family,
)

# The objects each family's instruction names: (role, kind, instruction slot).
ROLES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "lift": (("target", "cube", "c"),),
    "push": (("target", "cube", "c"),),
    "stack": (("target", "cube", "c"), ("base", "cube", "c2")),
    "place": (("target", "cube", "c"), ("bin", "bin", "c2")),
}


@dataclass(frozen=True)
class StateJudgeConfig:
    """Settings of a :class:`StateJudge`.

    Attributes:
        presence: an object class read with a lower in-view probability is absent.
        device: where the read-out runs.
    """

    presence: float = 0.5
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0.0 < self.presence < 1.0:
            raise ValueError(f"presence must be in (0, 1); got {self.presence}")


class StateJudge:
    """Success as the task predicate on the states read out of the first and last frames."""

    def __init__(
        self,
        readout,
        config: StateJudgeConfig | None = None,
        name: str = "state",
        weights_sha256: str = "",
    ):
        self.readout = readout
        self.config = config or StateJudgeConfig()
        self.name = name
        self.image_size = int(readout.config.image_size)
        # the read-out's weights identify the judge (as a probe's do): results and calibrations
        # record it, and a calibration made for other weights is refused
        self.prompt_hash = weights_sha256

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **options) -> StateJudge:
        """The judge on the read-out directory at ``path`` (options: the config's fields)."""
        config = StateJudgeConfig(**options)
        readout = load_readout(path, device=config.device)
        digest = hashlib.sha256(Path(path, "readout.safetensors").read_bytes()).hexdigest()
        return cls(readout, config, f"state:{Path(path).name}:{digest[:8]}", digest)

    def read(self, frames: np.ndarray) -> ReadStates:
        """States of the first and last of ``frames`` uint8 ``(T, H, W, 3)`` (two rows)."""
        if frames.shape[1] != frames.shape[2]:
            raise ValueError(
                "the state judge reads square frames of the twin's main camera (its read-out's "
                f"training view, resized to {self.image_size}x{self.image_size}); got "
                f"{frames.shape[2]}x{frames.shape[1]}"
            )
        return self.readout.read(frames[[0, -1]])

    def judge(self, frames: np.ndarray, instruction: str) -> Verdict:
        """The verdict on one episode's frames (see the module docstring)."""
        from wm_env.instructions import parse_instruction

        frames = check_judge_input(frames, instruction)
        parsed = parse_instruction(instruction)
        if parsed is None:
            return Verdict.abstain(f"not a task instruction the state judge knows: {instruction!r}")
        family, slots = parsed
        read = self.read(frames)
        spec, missing = task_spec(family, instruction, slots, read, self.config.presence)
        if missing:
            return Verdict.abstain(f"the first frame shows no {', '.join(missing)}")
        gone = [
            f"{o.color} {o.kind}"
            for o in spec.objects
            if read.present[1, OBJECT_CLASSES.index(object_class(o.kind, o.color))]
            < self.config.presence
        ]
        if gone:
            return Verdict(False, 0.0, f"the last frame shows no {', '.join(gone)}")
        success = bool(get_family(family).success(ReadoutScene(read, 1, spec), spec))
        return Verdict(success, float(success), describe(family, spec, read))


def task_spec(
    family: str, instruction: str, slots: dict[str, str], read: ReadStates, presence: float
) -> tuple[EpisodeSpec, list[str]]:
    """The episode spec an instruction names, placed where the first frame (row 0 of ``read``)
    shows its objects; and the named objects that frame does not show."""
    objects, roles, missing = [], {}, []
    for index, (role, kind, slot) in enumerate(ROLES[family]):
        color = slots[slot]
        k = OBJECT_CLASSES.index(object_class(kind, color))
        if read.present[0, k] < presence:
            missing.append(f"{color} {kind}")
        name = f"{kind}{index}"
        objects.append(ObjectPlacement(name, kind, color, read.objects[0, k].tolist()))
        roles[role] = name
    if family == "push":
        start = read.objects[0, OBJECT_CLASSES.index(object_class("cube", slots["c"]))]
        roles |= {"direction": slots["dir"], "start_x": f"{start[0]:.6f}",
                  "start_y": f"{start[1]:.6f}"}  # fmt: skip
    return EpisodeSpec(family, instruction, roles, objects), missing


def describe(family: str, spec: EpisodeSpec, read: ReadStates) -> str:
    """What the predicate was applied to, in physical units (the last frame, row 1)."""
    scene = ReadoutScene(read, 1, spec)
    target = spec.placement(spec.roles["target"])
    position = scene.object_position(target.name)
    held = " (held)" if scene.is_grasped(target.name) else ""
    what = f"the {target.color} cube{held}"
    if family == "lift":
        height = 100 * (position[2] - TABLE_TOP_Z - CUBE_HALF)
        return (
            f"{what} is {height:.1f} cm above its resting height; lifted means "
            f"{100 * LIFT_HEIGHT:.1f} cm"
        )
    if family == "push":
        start = np.array([float(spec.roles["start_x"]), float(spec.roles["start_y"])])
        moved = float(np.dot(position[:2] - start, direction_vector(spec.roles["direction"])))
        return (
            f"{what} moved {100 * moved:.1f} cm to the {spec.roles['direction']}; pushed means "
            f"{100 * PUSH_DISTANCE:.1f} cm"
        )
    other = spec.placement(spec.roles["base" if family == "stack" else "bin"])
    gap = scene.object_position(other.name) - position
    return (
        f"{what} is {100 * np.linalg.norm(gap[:2]):.1f} cm from the {other.color} {other.kind}'s "
        f"centre across and {100 * -gap[2]:.1f} cm above it"
    )
