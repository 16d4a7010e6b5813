"""The state judge: the sim's task predicates on states read out of the first and last frames."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from judges.state_judge import StateJudge, StateJudgeConfig
from judges.state_readout import OBJECT_CLASSES, ReadStates, object_class
from wm_env.sim.tasks import CUBE_HALF, TABLE_TOP_Z

REST_Z = TABLE_TOP_Z + CUBE_HALF


class FakeReadout:
    """Reads the states it was given for the first and the last frame."""

    config = SimpleNamespace(image_size=16)

    def __init__(self, first: dict, last: dict, eef=(0.0, 0.0, 1.0), gripper=(0.08, 0.08)):
        self.rows = (first, last)
        self.eef, self.gripper = np.array([eef, eef]), np.array(gripper)

    def read(self, frames):
        assert len(frames) == 2
        K = len(OBJECT_CLASSES)
        present, objects = np.zeros((2, K)), np.zeros((2, K, 3))
        for row, placed in enumerate(self.rows):
            for cls, position in placed.items():
                present[row, OBJECT_CLASSES.index(cls)] = 0.99
                objects[row, OBJECT_CLASSES.index(cls)] = position
        return ReadStates(self.eef, self.gripper, present, objects)


FRAMES = np.zeros((5, 16, 16, 3), np.uint8)
RED, BLUE = object_class("cube", "red"), object_class("cube", "blue")


def test_lift_is_judged_from_the_height_read_in_the_last_frame():
    start = {RED: (0.0, 0.0, REST_Z), BLUE: (0.1, 0.1, REST_Z)}
    lifted = StateJudge(FakeReadout(start, {**start, RED: (0.0, 0.0, REST_Z + 0.08)}))
    verdict = lifted.judge(FRAMES, "lift the red cube")
    assert verdict.success is True and verdict.score == 1.0
    assert "8.0 cm above its resting height" in verdict.rationale
    resting = StateJudge(FakeReadout(start, {**start, RED: (0.0, 0.0, REST_Z + 0.02)}))
    assert resting.judge(FRAMES, "lift the red cube").success is False
    # lifting another cube is no success
    other = StateJudge(FakeReadout(start, {**start, BLUE: (0.1, 0.1, REST_Z + 0.08)}))
    assert other.judge(FRAMES, "lift the red cube").success is False


def test_push_is_measured_from_where_the_first_frame_shows_the_cube():
    start = {RED: (0.0, 0.0, REST_Z)}
    judge = StateJudge(FakeReadout(start, {RED: (0.0, 0.1, REST_Z)}))
    left = judge.judge(FRAMES, "push the red cube to the left")
    right = judge.judge(FRAMES, "push the red cube to the right")
    assert {left.success, right.success} == {True, False}
    assert "10.0 cm" in (left.rationale if left.success else right.rationale)


def test_stack_needs_the_top_cube_on_the_base_and_released():
    start = {RED: (0.0, 0.0, REST_Z), BLUE: (0.1, 0.0, REST_Z)}
    on_top = {RED: (0.1, 0.0, REST_Z + 2 * CUBE_HALF), BLUE: (0.1, 0.0, REST_Z)}
    released = StateJudge(FakeReadout(start, on_top))
    assert released.judge(FRAMES, "stack the red cube on the blue cube").success is True
    held = StateJudge(
        FakeReadout(start, on_top, eef=(0.1, 0.0, REST_Z + 0.06), gripper=(0.08, 0.05))
    )
    verdict = held.judge(FRAMES, "stack the red cube on the blue cube")
    assert verdict.success is False and "(held)" in verdict.rationale


def test_an_object_that_vanishes_fails_and_one_never_seen_abstains():
    start = {RED: (0.0, 0.0, REST_Z)}
    faded = StateJudge(FakeReadout(start, {}))
    verdict = faded.judge(FRAMES, "lift the red cube")
    assert verdict.success is False and "shows no red cube" in verdict.rationale
    unseen = StateJudge(FakeReadout({}, start)).judge(FRAMES, "lift the red cube")
    assert unseen.abstained and "first frame shows no red cube" in unseen.rationale
    free_text = faded.judge(FRAMES, "tidy up the table please")
    assert free_text.abstained and "not a task instruction" in free_text.rationale


def test_bad_input_gets_a_clear_error():
    judge = StateJudge(FakeReadout({}, {}))
    with pytest.raises(ValueError, match="square frames"):
        judge.judge(np.zeros((3, 32, 16, 3), np.uint8), "lift the red cube")
    with pytest.raises(ValueError, match="uint8"):
        judge.judge(np.zeros((3, 16, 16, 3), np.float32), "lift the red cube")
    with pytest.raises(ValueError, match="presence"):
        StateJudgeConfig(presence=1.0)


def test_load_judge_builds_the_state_judge_from_a_readout_directory(tmp_path):
    from judges.registry import load_judge
    from judges.state_readout import ReadoutConfig, StateReadout, save_readout
    from wm_env.errors import UnknownNameError

    save_readout(StateReadout(ReadoutConfig(image_size=16, width=8, hidden=16)), tmp_path / "r")
    judge = load_judge(str(tmp_path / "r"))
    assert isinstance(judge, StateJudge) and judge.name.startswith("state:r:")
    assert len(judge.prompt_hash) == 64 and judge.name.endswith(judge.prompt_hash[:8])
    assert load_judge("state", path=str(tmp_path / "r"), presence=0.3).config.presence == 0.3
    verdict = judge.judge(FRAMES, "lift the red cube")  # random weights: any verdict, a valid one
    assert 0.0 <= verdict.score <= 1.0
    with pytest.raises(UnknownNameError, match="presence"):
        load_judge(str(tmp_path / "r"), presense=0.3)
