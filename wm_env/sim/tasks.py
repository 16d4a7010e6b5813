"""Task families of the ground-truth tabletop sim: layouts, instructions, success predicates.

A family samples an :class:`EpisodeSpec` (which pool objects are used, their colors and poses,
the instruction and the roles the expert needs), and judges success from the sim state. It
knows nothing about rendering or Gymnasium. Directions are in the robot's frame: ``left`` is
the robot's left (+y), ``front`` is away from the robot (+x), ``back`` towards it.

Pure Python: importing this module does not import robosuite.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from wm_env.errors import lookup

TABLE_TOP_Z = 0.8
CUBE_HALF = 0.03  # 6 cm cubes: at least 8 px wide at 64x64 anywhere in the workspace
BIN_HALF = 0.06

# Task objects only ever take these colors; distractors only take the others.
TASK_COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.08, 0.08, 1.0),
    "green": (0.1, 0.65, 0.15, 1.0),
    "blue": (0.1, 0.2, 0.9, 1.0),
    "yellow": (0.95, 0.82, 0.1, 1.0),
}
DISTRACTOR_COLORS: dict[str, tuple[float, float, float, float]] = {
    "purple": (0.5, 0.15, 0.7, 1.0),
    "orange": (1.0, 0.5, 0.05, 1.0),
    "cyan": (0.1, 0.85, 0.85, 1.0),
    "pink": (1.0, 0.45, 0.7, 1.0),
    "brown": (0.45, 0.28, 0.12, 1.0),
    "black": (0.08, 0.08, 0.08, 1.0),
}
DISTRACTOR_KINDS = ("ball", "cylinder", "capsule")
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (0.0, 1.0),
    "right": (0.0, -1.0),
    "front": (1.0, 0.0),
    "back": (-1.0, 0.0),
}
# Earlier names of a direction: start states recorded before a rename still restore and score.
DIRECTION_ALIASES = {"forward": "front"}


def direction_name(name: str) -> str:
    """The current name of a push direction (``forward`` -> ``front``)."""
    return DIRECTION_ALIASES.get(name, name)


def direction_vector(name: str) -> tuple[float, float]:
    """Unit (x, y) table-frame vector of a push direction, by current or earlier name."""
    return DIRECTIONS[direction_name(name)]


# Where objects may be placed (table frame, metres): inside the main camera's clear view.
WORKSPACE_X = (-0.08, 0.10)  # nearer the robot base the OSC leaves a 1-2 cm offset: grasps slip
WORKSPACE_Y = (-0.14, 0.14)
FOOTPRINT = {"cube": 0.05, "bin": 0.1, "ball": 0.027, "cylinder": 0.025, "capsule": 0.02}
BIN_REGION_X = (-0.08, 0.10)  # bins are large: they get a slightly wider band than cubes
BIN_REGION_Y = (-0.16, 0.16)
PUSH_DISTANCE = 0.08  # success: the cube moved this far in the asked direction
PUSH_TRAVEL = 0.12  # how far the expert pushes (and the free corridor the layout keeps)
LIFT_HEIGHT = 0.05


@dataclass
class ObjectPlacement:
    """One pool object used in an episode."""

    name: str  # pool object name, e.g. "cube0", "bin1", "ball0"
    kind: str  # cube | bin | ball | cylinder | capsule
    color: str
    position: list[float]  # (3,) world position of its centre
    yaw: float = 0.0


@dataclass
class EpisodeSpec:
    """Everything that defines an episode's start, besides the robot's (fixed) home pose."""

    family: str
    instruction: str
    roles: dict[str, str]  # e.g. {"target": "cube0", "base": "cube1", "direction": "left"}
    objects: list[ObjectPlacement]
    distractors: list[ObjectPlacement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeSpec:
        """Rebuild a spec from :meth:`to_dict` output."""
        return cls(
            family=data["family"],
            instruction=data["instruction"],
            roles=dict(data["roles"]),
            objects=[ObjectPlacement(**o) for o in data["objects"]],
            distractors=[ObjectPlacement(**o) for o in data.get("distractors", [])],
        )

    def placement(self, name: str) -> ObjectPlacement:
        """The placement of pool object ``name``."""
        for obj in self.objects + self.distractors:
            if obj.name == name:
                return obj
        raise KeyError(f"object {name!r} is not part of this episode")


class SceneView(Protocol):
    """The read-only view of the sim that success predicates need."""

    def object_position(self, name: str) -> np.ndarray: ...

    def is_grasped(self, name: str) -> bool: ...


# ---------------------------------------------------------------------- layout sampling
def _sample_positions(
    rng: np.random.Generator,
    kinds: list[str],
    keep_out: list[tuple[np.ndarray, float]],
    x_range=WORKSPACE_X,
    y_range=WORKSPACE_Y,
    max_tries: int = 200,
) -> list[np.ndarray]:
    """Rejection-sample non-overlapping xy positions ``(2,)`` for objects of the given kinds.

    ``keep_out`` holds (xy, radius) discs that no object may overlap (already placed objects,
    push corridors).
    """
    placed: list[tuple[np.ndarray, float]] = list(keep_out)
    out = []
    for kind in kinds:
        radius = FOOTPRINT[kind]
        for _ in range(max_tries):
            xy = np.array([rng.uniform(*x_range), rng.uniform(*y_range)])
            if all(np.linalg.norm(xy - other) > radius + r + 0.01 for other, r in placed):
                break
        else:
            raise LayoutError(f"could not place a {kind} in the workspace after {max_tries} tries")
        placed.append((xy, radius))
        out.append(xy)
    return out


class LayoutError(RuntimeError):
    """Random placement got stuck; the caller samples the whole layout again."""


def with_restarts(sample, rng: np.random.Generator, attempts: int = 50):
    """Call ``sample(rng)`` until it places everything (layouts are rejection-sampled)."""
    for _ in range(attempts - 1):
        try:
            return sample(rng)
        except LayoutError:
            continue
    return sample(rng)


# Height of each kind's centre above its bottom (robosuite's -bottom_offset; checked by a test).
CENTRE_HEIGHT = {"cube": CUBE_HALF, "bin": 0.02, "ball": 0.025, "cylinder": 0.03, "capsule": 0.036}


def _resting_z(kind: str) -> float:
    return TABLE_TOP_Z + CENTRE_HEIGHT[kind]


def _placement(name, kind, color, xy, rng, yaw_range=0.0) -> ObjectPlacement:
    yaw = float(rng.uniform(-yaw_range, yaw_range)) if yaw_range else 0.0
    return ObjectPlacement(name, kind, color, [float(xy[0]), float(xy[1]), _resting_z(kind)], yaw)


def sample_distractors(
    rng: np.random.Generator,
    count: int,
    taken: list[ObjectPlacement],
    max_slots: int,
    keep_out: list[tuple[np.ndarray, float]] = (),
) -> list[ObjectPlacement]:
    """``count`` distractor objects of kinds and colors that tasks never use, in free spots
    (away from ``taken`` objects and the task's ``keep_out`` discs, e.g. a push corridor)."""
    if count > max_slots:
        raise ValueError(
            f"{count} distractors asked for, but the scene was built with {max_slots} slots"
        )
    keep_out = [(np.array(o.position[:2]), FOOTPRINT[o.kind]) for o in taken] + list(keep_out)
    kinds = [DISTRACTOR_KINDS[int(k)] for k in rng.integers(0, len(DISTRACTOR_KINDS), size=count)]
    colors = rng.choice(
        sorted(DISTRACTOR_COLORS), size=count, replace=count > len(DISTRACTOR_COLORS)
    )
    positions = _sample_positions(rng, kinds, keep_out)
    used: dict[str, int] = {}
    out = []
    for kind, color, xy in zip(kinds, colors, positions, strict=True):
        slot = used.get(kind, 0)
        used[kind] = slot + 1
        out.append(_placement(f"{kind}{slot}", kind, str(color), xy, rng))
    return out


# ---------------------------------------------------------------------- families
class TaskFamily:
    """Base class: a family has a name, an object pool, instruction templates and a predicate."""

    name: str = ""
    num_cubes: int = 3
    num_bins: int = 0
    episode_seconds: float = 8.0  # default episode length, converted to env steps by the env

    def sample(self, rng: np.random.Generator) -> EpisodeSpec:
        """A random episode spec; layouts are rejection-sampled and restarted when stuck."""
        return with_restarts(self._sample, rng)

    def _sample(self, rng: np.random.Generator) -> EpisodeSpec:
        raise NotImplementedError

    def success(self, scene: SceneView, spec: EpisodeSpec) -> bool:
        raise NotImplementedError

    def instructions(self) -> list[str]:
        """Every instruction this family can generate (for a stable task index)."""
        raise NotImplementedError

    def keep_out(self, spec: EpisodeSpec) -> list[tuple[np.ndarray, float]]:
        """Discs (xy, radius) that must stay free of distractors for the task to be doable."""
        return []

    def wrong_roles(self, spec: EpisodeSpec, rng: np.random.Generator) -> dict[str, str]:
        """Roles a confused expert would act on: the same task on a wrong object."""
        others = [
            o.name for o in spec.objects if o.kind == "cube" and o.name != spec.roles["target"]
        ]
        return {**spec.roles, "target": str(rng.choice(others))}

    def _cubes(self, rng, count: int, keep_out=(), yaw_range: float = 0.6) -> list[ObjectPlacement]:
        colors = rng.choice(sorted(TASK_COLORS), size=count, replace=False)
        positions = _sample_positions(rng, ["cube"] * count, list(keep_out))
        return [
            _placement(f"cube{i}", "cube", str(c), xy, rng, yaw_range)
            for i, (c, xy) in enumerate(zip(colors, positions, strict=True))
        ]


class LiftFamily(TaskFamily):
    """ "lift the <color> cube": the cube's centre ends at least 5 cm above its resting height."""

    name = "lift"
    episode_seconds = 6.0

    def _sample(self, rng):
        cubes = self._cubes(rng, self.num_cubes)
        target = cubes[0]
        return EpisodeSpec(
            self.name, f"lift the {target.color} cube", {"target": target.name}, cubes
        )

    def success(self, scene, spec):
        z = scene.object_position(spec.roles["target"])[2]
        return bool(z > TABLE_TOP_Z + CUBE_HALF + LIFT_HEIGHT)

    def instructions(self):
        return [f"lift the {c} cube" for c in TASK_COLORS]


class StackFamily(TaskFamily):
    """ "stack the <c1> cube on the <c2> cube": c1 rests on c2, released."""

    name = "stack"
    episode_seconds = 10.0

    def _sample(self, rng):
        cubes = self._cubes(rng, self.num_cubes)
        top, base = cubes[0], cubes[1]
        return EpisodeSpec(
            self.name,
            f"stack the {top.color} cube on the {base.color} cube",
            {"target": top.name, "base": base.name},
            cubes,
        )

    def success(self, scene, spec):
        top = scene.object_position(spec.roles["target"])
        base = scene.object_position(spec.roles["base"])
        aligned = np.linalg.norm(top[:2] - base[:2]) < CUBE_HALF * 1.2
        on_top = abs((top[2] - base[2]) - 2 * CUBE_HALF) < 0.012
        base_on_table = base[2] < TABLE_TOP_Z + CUBE_HALF + 0.01
        return bool(
            aligned and on_top and base_on_table and not scene.is_grasped(spec.roles["target"])
        )

    def instructions(self):
        return [
            f"stack the {a} cube on the {b} cube" for a, b in itertools.permutations(TASK_COLORS, 2)
        ]

    def wrong_roles(self, spec, rng):
        others = [
            o.name for o in spec.objects if o.name not in (spec.roles["target"], spec.roles["base"])
        ]
        if rng.random() < 0.5:  # swap the two cubes
            return {**spec.roles, "target": spec.roles["base"], "base": spec.roles["target"]}
        return {**spec.roles, "base": str(rng.choice(others))}


def _push_corridor(start_xy: np.ndarray, direction: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """The push path and the pusher's approach behind the cube, as discs to keep free."""
    return [
        (start_xy + s * direction, FOOTPRINT["cube"])
        for s in np.linspace(-0.08, PUSH_TRAVEL + 0.03, 6)
    ]


class PushFamily(TaskFamily):
    """ "push the <color> cube to the <direction>": it moves 8+ cm that way and stays on the table."""

    name = "push"
    episode_seconds = 7.0

    def _sample(self, rng):
        direction = str(rng.choice(sorted(DIRECTIONS)))
        d = np.array(DIRECTIONS[direction])
        # The target starts where it has room to travel: shift the sampling box against d.
        margin = PUSH_TRAVEL * 0.75
        x_range = (WORKSPACE_X[0] + margin * max(-d[0], 0), WORKSPACE_X[1] - margin * max(d[0], 0))
        y_range = (WORKSPACE_Y[0] + margin * max(-d[1], 0), WORKSPACE_Y[1] - margin * max(d[1], 0))
        target_xy = _sample_positions(rng, ["cube"], [], x_range, y_range)[0]
        corridor = _push_corridor(target_xy, d)
        color = rng.choice(sorted(TASK_COLORS), size=self.num_cubes, replace=False)
        others = _sample_positions(rng, ["cube"] * (self.num_cubes - 1), corridor)
        cubes = [_placement("cube0", "cube", str(color[0]), target_xy, rng, 0.4)]
        cubes += [
            _placement(f"cube{i + 1}", "cube", str(c), xy, rng, 0.6)
            for i, (c, xy) in enumerate(zip(color[1:], others, strict=True))
        ]
        start = cubes[0].position
        roles = {
            "target": "cube0",
            "direction": direction,
            "start_x": f"{start[0]:.6f}",
            "start_y": f"{start[1]:.6f}",
        }
        return EpisodeSpec(
            self.name, f"push the {cubes[0].color} cube to the {direction}", roles, cubes
        )

    def success(self, scene, spec):
        pos = scene.object_position(spec.roles["target"])
        start = np.array([float(spec.roles["start_x"]), float(spec.roles["start_y"])])
        moved = float(np.dot(pos[:2] - start, direction_vector(spec.roles["direction"])))
        on_table = pos[2] < TABLE_TOP_Z + CUBE_HALF + 0.01
        return bool(moved >= PUSH_DISTANCE and on_table)

    def instructions(self):
        return [f"push the {c} cube to the {d}" for c in TASK_COLORS for d in DIRECTIONS]

    def keep_out(self, spec):
        start = np.array([float(spec.roles["start_x"]), float(spec.roles["start_y"])])
        return _push_corridor(start, np.array(direction_vector(spec.roles["direction"])))

    def wrong_roles(self, spec, rng):
        if rng.random() < 0.5:
            wrong = [d for d in DIRECTIONS if d != direction_name(spec.roles["direction"])]
            return {**spec.roles, "direction": str(rng.choice(wrong))}
        return super().wrong_roles(spec, rng)


class PlaceFamily(TaskFamily):
    """ "put the <color> cube into the <color> bin": it rests inside the bin's walls, released."""

    name = "place"
    num_cubes = 2
    num_bins = 2
    episode_seconds = 10.0

    def _sample(self, rng):
        colors = rng.choice(sorted(TASK_COLORS), size=4, replace=False)
        bin_xy = _sample_positions(rng, ["bin"] * 2, [], BIN_REGION_X, BIN_REGION_Y)
        bins = [
            _placement(f"bin{i}", "bin", str(colors[2 + i]), xy, rng) for i, xy in enumerate(bin_xy)
        ]
        keep_out = [(xy, FOOTPRINT["bin"]) for xy in bin_xy]
        cube_xy = _sample_positions(rng, ["cube"] * 2, keep_out)
        cubes = [
            _placement(f"cube{i}", "cube", str(colors[i]), xy, rng, 0.6)
            for i, xy in enumerate(cube_xy)
        ]
        target, goal = cubes[0], bins[0]
        return EpisodeSpec(
            self.name,
            f"put the {target.color} cube into the {goal.color} bin",
            {"target": target.name, "bin": goal.name},
            cubes + bins,
        )

    def success(self, scene, spec):
        cube = scene.object_position(spec.roles["target"])
        goal = scene.object_position(spec.roles["bin"])
        inside = np.all(np.abs(cube[:2] - goal[:2]) < BIN_HALF - 0.01)
        low = cube[2] < TABLE_TOP_Z + 0.06
        return bool(inside and low and not scene.is_grasped(spec.roles["target"]))

    def instructions(self):
        return [
            f"put the {a} cube into the {b} bin" for a, b in itertools.permutations(TASK_COLORS, 2)
        ]

    def wrong_roles(self, spec, rng):
        if rng.random() < 0.5:
            return {**spec.roles, "bin": "bin1"}
        return {**spec.roles, "target": "cube1"}


FAMILIES: dict[str, TaskFamily] = {
    f.name: f for f in (LiftFamily(), StackFamily(), PushFamily(), PlaceFamily())
}


def get_family(name: str) -> TaskFamily:
    """The family registered under ``name`` (lower case), with "did you mean" on a typo."""
    return lookup("task family", name, FAMILIES)


def all_instructions() -> list[str]:
    """Every instruction of every family, in a fixed order: the dataset's task index."""
    return [text for family in FAMILIES.values() for text in family.instructions()]
