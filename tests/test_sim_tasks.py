"""Task families (wm_env.sim.tasks): layouts, instructions, specs, predicates. Pure Python, no sim."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from wm_env.errors import UnknownNameError
from wm_env.sim.tasks import (
    BIN_HALF,
    BIN_REGION_X,
    BIN_REGION_Y,
    CENTRE_HEIGHT,
    CUBE_HALF,
    DIRECTIONS,
    DISTRACTOR_COLORS,
    DISTRACTOR_KINDS,
    FAMILIES,
    FOOTPRINT,
    LIFT_HEIGHT,
    PUSH_DISTANCE,
    PUSH_TRAVEL,
    TABLE_TOP_Z,
    TASK_COLORS,
    WORKSPACE_X,
    WORKSPACE_Y,
    EpisodeSpec,
    all_instructions,
    get_family,
    sample_distractors,
    with_restarts,
)

SEEDS = range(200)
EPS = 1e-9


def sample(family: str, seed: int, num_distractors: int = 0) -> EpisodeSpec:
    """Sample a layout the way the env does (rejection sampling restarts on a dead end)."""

    def attempt(rng: np.random.Generator) -> EpisodeSpec:
        spec = FAMILIES[family].sample(rng)
        spec.distractors = sample_distractors(rng, num_distractors, spec.objects, max_slots=2)
        return spec

    return with_restarts(attempt, np.random.default_rng(seed))


def sampled_specs(family: str) -> list[EpisodeSpec]:
    return [sample(family, seed) for seed in SEEDS]


def _segment_distance(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from ``point`` to the segment ``a``-``b`` (all (2,))."""
    t = np.clip(np.dot(point - a, b - a) / np.dot(b - a, b - a), 0.0, 1.0)
    return float(np.linalg.norm(point - (a + t * (b - a))))


class FakeScene:
    """A SceneView with given object positions and nothing grasped."""

    def __init__(self, positions: dict[str, np.ndarray], grasped: frozenset[str] = frozenset()):
        self.positions = {k: np.asarray(v, dtype=float) for k, v in positions.items()}
        self.grasped = grasped

    def object_position(self, name):
        return self.positions[name].copy()

    def is_grasped(self, name):
        return name in self.grasped


def resting_scene(spec: EpisodeSpec) -> FakeScene:
    return FakeScene({o.name: np.array(o.position) for o in spec.objects + spec.distractors})


def test_all_instructions_are_unique_and_cover_every_family():
    """The dataset's task index lists every template of every family exactly once."""
    everything = all_instructions()
    assert len(everything) == len(set(everything))
    for family in FAMILIES.values():
        assert set(family.instructions()) <= set(everything)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sampled_instructions_are_templates_naming_the_roles(family):
    """Every sampled instruction is one of the family's templates and names the target's color."""
    templates = set(FAMILIES[family].instructions())
    for spec in sampled_specs(family):
        assert spec.family == family
        assert spec.instruction in templates
        target = spec.placement(spec.roles["target"])
        assert f"the {target.color} cube" in spec.instruction
        if family == "push":
            assert spec.instruction.endswith(f"to the {spec.roles['direction']}")
        if family == "stack":
            assert spec.instruction.endswith(
                f"on the {spec.placement(spec.roles['base']).color} cube"
            )
        if family == "place":
            assert spec.instruction.endswith(
                f"into the {spec.placement(spec.roles['bin']).color} bin"
            )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layouts_do_not_overlap_and_stay_in_the_workspace(family):
    """200 seeded layouts: footprints never overlap, objects rest on the table inside the
    region they are sampled from, task colors are distinct and from TASK_COLORS."""
    for spec in sampled_specs(family):
        objects = spec.objects
        assert len({o.name for o in objects}) == len(objects)
        assert len({o.color for o in objects}) == len(objects)
        for a, b in itertools.combinations(objects, 2):
            gap = np.linalg.norm(np.subtract(a.position[:2], b.position[:2]))
            assert gap > FOOTPRINT[a.kind] + FOOTPRINT[b.kind], (spec.instruction, a, b)
        for obj in objects:
            assert obj.color in TASK_COLORS
            x, y, z = obj.position
            assert z == pytest.approx(TABLE_TOP_Z + CENTRE_HEIGHT[obj.kind])
            x_range, y_range = (
                (BIN_REGION_X, BIN_REGION_Y) if obj.kind == "bin" else (WORKSPACE_X, WORKSPACE_Y)
            )
            assert x_range[0] - EPS <= x <= x_range[1] + EPS, obj
            assert y_range[0] - EPS <= y <= y_range[1] + EPS, obj


def test_push_corridor_is_free_and_the_goal_is_in_the_workspace():
    """The pushed cube's path (pusher approach behind it, then the full push travel) is clear of
    the other cubes, and the distance that counts as success ends inside the workspace."""
    directions = set()
    for spec in sampled_specs("push"):
        target = spec.placement(spec.roles["target"])
        d = np.array(DIRECTIONS[spec.roles["direction"]])
        start = np.array(target.position[:2])
        recorded = [float(spec.roles["start_x"]), float(spec.roles["start_y"])]
        assert start == pytest.approx(recorded, abs=1e-6)  # roles store 6 decimals
        behind, ahead = start - 0.08 * d, start + PUSH_TRAVEL * d
        for other in spec.objects:
            if other.name != target.name:
                clearance = _segment_distance(np.array(other.position[:2]), behind, ahead)
                assert clearance > 2 * FOOTPRINT["cube"], (spec.instruction, other)
        goal = start + PUSH_DISTANCE * d
        assert WORKSPACE_X[0] - EPS <= goal[0] <= WORKSPACE_X[1] + EPS
        assert WORKSPACE_Y[0] - EPS <= goal[1] <= WORKSPACE_Y[1] + EPS
        directions.add(spec.roles["direction"])
    assert directions == set(DIRECTIONS)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_success_is_false_on_every_sampled_layout(family):
    """Success predicates are not trivially true: no sampled start layout already succeeds."""
    fam = FAMILIES[family]
    for spec in sampled_specs(family):
        assert fam.success(resting_scene(spec), spec) is False


def test_success_predicates_accept_solved_states():
    """Each predicate turns true on a hand-made solved state (and respects its release rule)."""
    lift = sample("lift", 0)
    scene = resting_scene(lift)
    scene.positions[lift.roles["target"]][2] += LIFT_HEIGHT + 0.01
    assert FAMILIES["lift"].success(scene, lift)

    stack = sample("stack", 0)
    scene = resting_scene(stack)
    base = scene.positions[stack.roles["base"]]
    scene.positions[stack.roles["target"]] = base + [0.0, 0.0, 2 * CUBE_HALF]
    assert FAMILIES["stack"].success(scene, stack)
    held = FakeScene(scene.positions, grasped=frozenset({stack.roles["target"]}))
    assert not FAMILIES["stack"].success(held, stack)

    push = sample("push", 0)
    scene = resting_scene(push)
    scene.positions[push.roles["target"]][:2] += PUSH_DISTANCE * np.array(
        DIRECTIONS[push.roles["direction"]]
    )
    assert FAMILIES["push"].success(scene, push)

    place = sample("place", 0)
    scene = resting_scene(place)
    goal = scene.positions[place.roles["bin"]]
    scene.positions[place.roles["target"]] = goal + [BIN_HALF / 3, 0.0, 0.03]
    assert FAMILIES["place"].success(scene, place)
    other_bin = next(
        o.name for o in place.objects if o.kind == "bin" and o.name != place.roles["bin"]
    )
    scene.positions[place.roles["target"]] = scene.positions[other_bin] + [0.0, 0.0, 0.03]
    assert not FAMILIES["place"].success(scene, place)


def test_distractors_use_free_spots_and_non_task_looks():
    """Distractors take DISTRACTOR_KINDS / DISTRACTOR_COLORS only, distinct pool names, and
    never overlap the task objects or each other."""
    kinds_seen = set()
    for seed in SEEDS:
        spec = sample("place", seed, num_distractors=2)
        distractors = spec.distractors
        assert len(distractors) == 2
        assert len({d.name for d in distractors}) == 2
        for d in distractors:
            assert d.kind in DISTRACTOR_KINDS
            assert d.color in DISTRACTOR_COLORS and d.color not in TASK_COLORS
            assert d.name.startswith(d.kind) and int(d.name[len(d.kind) :]) < 2
            assert d.position[2] == pytest.approx(TABLE_TOP_Z + CENTRE_HEIGHT[d.kind])
            kinds_seen.add(d.kind)
        for a, b in itertools.combinations(spec.objects + distractors, 2):
            gap = np.linalg.norm(np.subtract(a.position[:2], b.position[:2]))
            assert gap > FOOTPRINT[a.kind] + FOOTPRINT[b.kind]
    assert kinds_seen == set(DISTRACTOR_KINDS)


def test_more_distractors_than_slots_is_an_error():
    """Asking for more distractors than the scene has slots raises ValueError naming the slots."""
    with pytest.raises(ValueError, match="slots"):
        sample_distractors(np.random.default_rng(0), 3, [], max_slots=2)


def test_episode_spec_round_trips_through_json():
    """to_dict -> JSON -> from_dict gives back an equal spec (with distractors)."""
    for family in FAMILIES:
        spec = sample(family, seed=3, num_distractors=2)
        restored = EpisodeSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert restored == spec
        assert restored.placement(spec.roles["target"]) == spec.placement(spec.roles["target"])
    with pytest.raises(KeyError):
        spec.placement("cube9")


def test_unknown_family_suggests_the_closest_name():
    """get_family on a typo raises UnknownNameError (a KeyError) with a did-you-mean hint."""
    with pytest.raises(UnknownNameError, match="did you mean 'lift'") as info:
        get_family("lfit")
    assert isinstance(info.value, KeyError)
    assert "push" in str(info.value)  # lists the valid names too


def test_start_states_recorded_with_the_old_push_direction_name_restore_and_score(sim_env_factory):
    env = sim_env_factory("push")
    env.reset(seed=0)
    start = env.unwrapped.start_state()
    old = json.loads(json.dumps(start))
    if old["spec"]["roles"]["direction"] != "front":  # re-record a "front" layout
        for seed in range(1, 40):
            env.reset(seed=seed)
            start = env.unwrapped.start_state()
            if start["spec"]["roles"]["direction"] == "front":
                break
        old = json.loads(json.dumps(start))
    assert old["spec"]["roles"]["direction"] == "front"
    old["spec"]["roles"]["direction"] = "forward"  # as datasets recorded before the rename hold
    _, info_old = env.reset(options={"start": old})
    _, info_new = env.reset(options={"start": start})
    assert info_old["success"] == info_new["success"]
    from wm_env.sim.tasks import direction_vector

    assert direction_vector("forward") == direction_vector("front")
