"""Tests of the OOD wrappers (wm_env.wrappers) and instruction perturbations (wm_env.instructions).

A small fake world-model env implements the start contract (``load_start`` and reset from given
frames), so these tests do not depend on the real world-model env.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from wm_env.editing import PasteDistractorEditor
from wm_env.errors import UnknownNameError
from wm_env.instructions import (
    MODES,
    instruction_variants,
    parse_instruction,
    perturb_instruction,
)
from wm_env.sim.tasks import all_instructions
from wm_env.spaces import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH, action_space
from wm_env.spaces import observation_space as make_observation_space
from wm_env.wrappers import DistractorWrapper, InstructionWrapper


class FakeWorldModelEnv(gym.Env):
    """Implements the world-model start contract; the image never changes after reset.

    ``load_start(seed, options)`` returns ``history`` frames of a table scene (a dark "robot"
    square moves along the top between frames) and the instruction ``"lift the red cube"``.
    ``reset(options={"frames", "instruction"})`` starts from the given frames and keeps what
    it got in ``received``.
    """

    metadata = {"render_modes": []}

    def __init__(self, size: int = 64, history: int = 3) -> None:
        self.size, self.history = size, history
        self.observation_space = make_observation_space(size, size)
        self.action_space = action_space()
        self.received: dict | None = None
        self.load_calls = 0
        self._image: np.ndarray | None = None
        self._instruction = ""

    def load_start(self, seed, options):
        self.load_calls += 1
        if seed is not None:  # like a reset: seed the env, then draw from its np_random
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        rng = self.np_random
        base = np.full((self.size, self.size, 3), 245, np.uint8)
        base[: self.size // 5] = 90  # floor
        x, y = rng.integers(self.size // 4, self.size // 2, size=2)
        base[y : y + 8, x : x + 8] = (200, 20, 20)  # the red cube
        frames = np.stack([base.copy() for _ in range(self.history)])  # (l, H, W, 3)
        for i in range(self.history):
            frames[i, 2:8, 6 * i : 6 * i + 6] = 30  # the robot moves in the top band
        return {"frames": frames, "instruction": "lift the red cube", "start_id": f"fake{x}"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = dict(options or {})
        if "frames" not in options:
            start = self.load_start(seed, options)
            options = {"frames": start["frames"], "instruction": start["instruction"]}
        self.received = options
        frames = np.asarray(options["frames"])
        self._image = (frames[-1] if frames.ndim == 4 else frames).copy()
        self._instruction = options["instruction"]
        return self._obs(), {"start": "given"}

    def step(self, action):
        self.np_random.random()  # a world model samples noise every step
        return self._obs(), 0.0, False, False, {"stepped": True}

    def _obs(self):
        return {"image": self._image.copy(), "instruction": self._instruction}


class NoStartEnv(FakeWorldModelEnv):
    """Like the ground-truth sim: no load_start."""

    load_start = None


# ---------------------------------------------------------------------- DistractorWrapper
def test_distractor_wrapper_edits_every_history_frame_identically():
    env = FakeWorldModelEnv()
    wrapped = DistractorWrapper(env, PasteDistractorEditor(count=2))
    obs, info = wrapped.reset(seed=3)
    original = env.load_start(3, None)["frames"]
    edited = env.received["frames"]
    assert edited.shape == original.shape and edited.dtype == np.uint8
    assert env.received["instruction"] == "lift the red cube"
    deltas = edited.astype(int) - original.astype(int)
    assert np.abs(deltas).max() > 0
    for i in range(1, len(deltas)):
        np.testing.assert_array_equal(deltas[i], deltas[0])  # one edit, same place, same look
    np.testing.assert_array_equal(obs["image"], edited[-1])
    record = info["edit"]
    assert info["start"] == "given" and info["start_id"].startswith("fake")
    assert record["editor"] == "paste" and record["count"] == 2 and len(record["boxes"]) == 2
    for x0, y0, x1, y1 in record["boxes"]:
        assert np.abs(deltas[0, y0:y1, x0:x1]).max() > 0
    assert wrapped.last_edit.to_dict() == record


def test_distractor_wrapper_is_seeded():
    wrapped = DistractorWrapper(FakeWorldModelEnv(), "paste")
    a, info_a = wrapped.reset(seed=5)
    b, info_b = wrapped.reset(seed=5)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert info_a["edit"] == info_b["edit"]
    others = [wrapped.reset(seed=s)[1]["edit"]["boxes"] for s in (6, 7, 8)]
    assert any(boxes != info_a["edit"]["boxes"] for boxes in others)
    # Unseeded resets continue the stream of the last seed: reproducible sequences.
    wrapped.reset(seed=9)
    first = [wrapped.reset()[1]["edit"] for _ in range(2)]
    wrapped.reset(seed=9)
    assert [wrapped.reset()[1]["edit"] for _ in range(2)] == first
    assert first[0] != first[1]


def test_distractor_wrapper_leaves_the_env_random_stream_alone():
    env = FakeWorldModelEnv()
    DistractorWrapper(env).reset(seed=11)
    reference = FakeWorldModelEnv()  # started from the same frames, without the wrapper
    reference.reset(seed=11, options=env.received)
    assert env.np_random.random() == reference.np_random.random()


def test_distractor_wrapper_accepts_single_start_frame():
    env = FakeWorldModelEnv(history=1)
    original_load = env.load_start

    def load_single(seed, options):
        start = original_load(seed, options)
        return {**start, "frames": start["frames"][0]}  # (H, W, 3)

    env.load_start = load_single
    obs, info = DistractorWrapper(env).reset(seed=0)
    assert env.received["frames"].shape == (64, 64, 3)
    assert info["edit"]["count"] == 1


def test_distractor_wrapper_needs_load_start():
    with pytest.raises(TypeError, match="num_distractors"):
        DistractorWrapper(NoStartEnv())
    with pytest.raises(UnknownNameError, match="did you mean 'paste'"):
        DistractorWrapper(FakeWorldModelEnv(), "pasta")


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped")
def test_distractor_wrapper_passes_check_env():
    wrapped = DistractorWrapper(FakeWorldModelEnv())
    assert wrapped.observation_space == wrapped.env.observation_space
    assert wrapped.action_space == wrapped.env.action_space
    check_env(wrapped, skip_render_check=True)


# ---------------------------------------------------------------------- InstructionWrapper
@pytest.mark.parametrize("mode", MODES)
def test_instruction_wrapper_is_consistent_within_an_episode(mode):
    wrapped = InstructionWrapper(FakeWorldModelEnv(), mode=mode)
    obs, info = wrapped.reset(seed=0)
    perturbed = obs["instruction"]
    assert perturbed != "lift the red cube"
    assert set(perturbed) <= INSTRUCTION_CHARSET and len(perturbed) <= MAX_INSTRUCTION_LENGTH
    assert wrapped.observation_space.contains(obs)
    assert info["instruction_perturbation"] == {
        "original": "lift the red cube",
        "perturbed": perturbed,
        "mode": mode,
    }
    for _ in range(3):
        obs, _, _, _, info = wrapped.step(wrapped.action_space.sample())
        assert obs["instruction"] == perturbed and info["stepped"]
        assert info["instruction_perturbation"]["perturbed"] == perturbed
    assert wrapped.env._obs()["instruction"] == "lift the red cube"  # the env keeps the task
    assert wrapped.reset(seed=0)[0]["instruction"] == perturbed  # same seed, same phrasing
    seen = {wrapped.reset(seed=s)[0]["instruction"] for s in range(12)}
    assert len(seen) > 3


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped")
def test_instruction_wrapper_errors_and_composition():
    with pytest.raises(UnknownNameError, match="did you mean 'unseen'"):
        InstructionWrapper(FakeWorldModelEnv(), mode="unsen")
    with pytest.raises(TypeError, match="instruction"):
        InstructionWrapper(gym.make("CartPole-v1"))
    with pytest.raises(RuntimeError, match="reset"):
        InstructionWrapper(FakeWorldModelEnv()).step(np.zeros(7, np.float32))
    both = InstructionWrapper(DistractorWrapper(FakeWorldModelEnv()), mode="unseen", seed=1)
    obs, info = both.reset(seed=2)
    assert "edit" in info and "instruction_perturbation" in info
    assert obs["instruction"] != "lift the red cube"
    check_env(both, skip_render_check=True)


# ---------------------------------------------------------------------- instructions
def test_every_template_instruction_parses_and_perturbs_within_the_charset():
    for text in all_instructions():
        assert parse_instruction(text) is not None, text
        for mode in MODES:
            variants = instruction_variants(text, mode)
            assert len(variants) >= 4 and text not in variants
            for variant in variants:
                assert set(variant) <= INSTRUCTION_CHARSET, variant
                assert 0 < len(variant) <= MAX_INSTRUCTION_LENGTH


def test_perturbations_keep_the_slots():
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = perturb_instruction("stack the red cube on the blue cube", rng, "unseen")
        assert "red" in text and "blue" in text
        assert text.index("red") < text.index("blue") or "bottom" in text
        push = perturb_instruction("push the green cube to the left", rng, "paraphrase")
        assert "green" in push and "left" in push
        place = perturb_instruction("put the red cube into the yellow bin", rng, "unseen")
        assert "red" in place and "yellow" in place


def test_parse_instruction():
    assert parse_instruction("lift the red cube") == ("lift", {"c": "red"})
    assert parse_instruction("Push the red cube to the front.") == (
        "push",
        {"c": "red", "dir": "front"},
    )
    assert parse_instruction("put the red cube into the blue bin") == (
        "place",
        {"c": "red", "c2": "blue"},
    )
    assert parse_instruction("open the drawer") is None


def test_unknown_instructions_get_generic_frames():
    rng = np.random.default_rng(0)
    texts = {perturb_instruction("Open the drawer.", rng, "unseen") for _ in range(20)}
    assert all("open the drawer" in t for t in texts) and len(texts) > 2
    assert perturb_instruction("wipe the table", rng) != "wipe the table"
    long = "a" * MAX_INSTRUCTION_LENGTH
    assert perturb_instruction(long, rng) == long  # no frame fits: unchanged
    with pytest.raises(ValueError, match="charset"):
        perturb_instruction("lift the red cube \u2192 now", rng)
    with pytest.raises(ValueError, match="empty"):
        perturb_instruction("  ", rng)


def test_perturbation_is_deterministic():
    texts = [
        perturb_instruction("lift the blue cube", np.random.default_rng(4), "unseen")
        for _ in range(3)
    ]
    assert len(set(texts)) == 1
