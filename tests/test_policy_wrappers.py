"""Baseline policies, policy wrappers (chunks, noise, recording) and ``load_policy``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policies.base import Policy, uses_image
from policies.registry import POLICY_TYPES, load_policy
from policies.simple import RandomPolicy, ZeroPolicy
from policies.wrappers import ActionNoise, ChunkExecutor, RecordingPolicy
from wm_env.errors import CorruptFileError, UnknownNameError


def observation(value: int = 0, instruction: str = "lift the red cube", size: int = 8) -> dict:
    return {"image": np.full((size, size, 3), value, np.uint8), "instruction": instruction}


class CountingChunks:
    """Chunk ``i`` (0-based query count) is ``(k, 7)`` with row ``j`` filled with ``(10 i + j) / 100``."""

    name = "counting"

    def __init__(self, k: int = 4) -> None:
        self.k, self.queries, self.resets = k, 0, []

    def reset(self, instruction: str) -> None:
        self.resets.append(instruction)

    def act(self, obs: dict) -> np.ndarray:
        rows = (10 * self.queries + np.arange(self.k)) / 100
        self.queries += 1
        chunk = np.repeat(rows[:, None], 7, axis=1).astype(np.float32)
        return chunk if self.k > 1 else chunk[0]


class Constant:
    name = "constant"

    def __init__(self, action) -> None:
        self.action = np.asarray(action, np.float32)

    def reset(self, instruction: str) -> None:
        pass

    def act(self, obs: dict) -> np.ndarray:
        return self.action.copy()


# --------------------------------------------------------------------------- baselines


def test_random_policy_is_seeded_and_uniform_in_its_bounds():
    low = np.array([-1, -0.5, 0, 0, -1, -1, -1], np.float32)
    high = np.array([1, 0.5, 0.2, 0, 1, 1, 1], np.float32)
    a, b = RandomPolicy(seed=3, low=low, high=high), RandomPolicy(seed=3, low=low, high=high)
    a.reset("lift the red cube")
    actions = np.stack([a.act(observation()) for _ in range(2000)])
    assert actions.shape == (2000, 7) and actions.dtype == np.float32
    np.testing.assert_array_equal(actions[:5], np.stack([b.act(observation()) for _ in range(5)]))
    assert (actions >= low).all() and (actions <= high).all()
    np.testing.assert_allclose(actions.mean(0), (low + high) / 2, atol=0.03)
    assert actions[:, 0].min() < -0.95 and actions[:, 0].max() > 0.95  # fills the range
    other = RandomPolicy(seed=4).act(observation())
    assert not np.allclose(other, RandomPolicy(seed=3).act(observation()))
    with pytest.raises(ValueError, match="low <= high"):
        RandomPolicy(low=1.0, high=-1.0)


def test_zero_policy_keeps_still_with_the_gripper_open():
    policy = ZeroPolicy()
    policy.reset("lift the red cube")
    np.testing.assert_array_equal(policy.act(observation()), [0, 0, 0, 0, 0, 0, -1])
    assert isinstance(policy, Policy) and isinstance(RandomPolicy(), Policy)


BAD_OBSERVATIONS = {
    "float image": (
        {"image": np.zeros((8, 8, 3), np.float32), "instruction": "lift"},
        "uint8",
    ),
    "grey image": ({"image": np.zeros((8, 8), np.uint8), "instruction": "lift"}, r"\(H, W, 3\)"),
    "empty instruction": (
        {"image": np.zeros((8, 8, 3), np.uint8), "instruction": "  "},
        "instruction",
    ),
    "not a dict": (np.zeros((8, 8, 3), np.uint8), "dict"),
}


@pytest.mark.parametrize("bad", BAD_OBSERVATIONS, ids=list(BAD_OBSERVATIONS))
@pytest.mark.parametrize(
    "make",
    [
        RandomPolicy,
        ZeroPolicy,
        lambda: ChunkExecutor(ZeroPolicy()),
        lambda: ActionNoise(ZeroPolicy(), std=0.1),
        lambda: RecordingPolicy(ZeroPolicy()),
    ],
    ids=["random", "zero", "chunk", "noise", "recording"],
)
def test_policies_reject_malformed_observations(make, bad):
    obs, message = BAD_OBSERVATIONS[bad]
    with pytest.raises(ValueError, match=message):
        make().act(obs)


def test_blind_policies_may_be_given_no_image():
    """random, zero (and wrappers of them) declare uses_image = False: runners may skip the image."""
    for policy in (
        RandomPolicy(),
        ZeroPolicy(),
        ChunkExecutor(ZeroPolicy()),
        ActionNoise(ZeroPolicy(), std=0.1),
    ):
        assert not uses_image(policy)
        assert policy.act({"image": None, "instruction": "lift the red cube"}).shape == (7,)
        assert policy.act({"instruction": "lift the red cube"}).shape == (7,)
    recording = RecordingPolicy(ZeroPolicy())  # keeps the images, so it needs them
    assert uses_image(recording) and uses_image(ChunkExecutor(recording))
    with pytest.raises(ValueError, match="image"):
        recording.act({"instruction": "lift the red cube"})
    with pytest.raises(ValueError, match="image"):
        ChunkExecutor(recording).act({"image": None, "instruction": "lift the red cube"})


def test_reset_rejects_an_empty_instruction():
    for policy in (
        RandomPolicy(),
        ZeroPolicy(),
        ChunkExecutor(ZeroPolicy()),
        RecordingPolicy(ZeroPolicy()),
    ):
        with pytest.raises(ValueError, match="instruction"):
            policy.reset("")


# --------------------------------------------------------------------------- chunk execution


def test_chunk_executor_hands_out_a_whole_chunk_before_asking_again():
    inner = CountingChunks(k=4)
    policy = ChunkExecutor(inner)
    policy.reset("lift the red cube")
    values = [policy.act(observation())[0] for _ in range(10)]
    np.testing.assert_allclose(
        values, [0, 0.01, 0.02, 0.03, 0.1, 0.11, 0.12, 0.13, 0.2, 0.21], atol=1e-7
    )
    assert inner.queries == 3 and policy.act(observation()).shape == (7,)


def test_chunk_executor_executes_only_the_first_actions_of_each_chunk():
    inner = CountingChunks(k=4)
    policy = ChunkExecutor(inner, execute=2)
    policy.reset("lift the red cube")
    values = [policy.act(observation())[0] for _ in range(6)]
    np.testing.assert_allclose(values, [0, 0.01, 0.1, 0.11, 0.2, 0.21], atol=1e-7)
    assert inner.queries == 3


def test_chunk_executor_reset_drops_the_rest_of_the_chunk():
    inner = CountingChunks(k=4)
    policy = ChunkExecutor(inner)
    policy.reset("lift the red cube")
    policy.act(observation())
    policy.reset("push the blue cube to the left")
    assert policy.act(observation())[0] == pytest.approx(0.1)  # a fresh chunk, not row 1 of chunk 0
    assert inner.resets == ["lift the red cube", "push the blue cube to the left"]


def test_chunk_executor_queries_single_action_policies_every_step():
    inner = CountingChunks(k=1)
    policy = ChunkExecutor(inner, execute=3)
    values = [policy.act(observation())[0] for _ in range(3)]
    np.testing.assert_allclose(values, [0, 0.1, 0.2], atol=1e-7)


@pytest.mark.parametrize("execute", [0, -1, 1.5, True])
def test_chunk_executor_rejects_bad_execute(execute):
    with pytest.raises(ValueError, match="execute"):
        ChunkExecutor(ZeroPolicy(), execute=execute)


def test_wrappers_reject_nan_or_wrongly_shaped_inner_actions():
    nan = np.zeros(7, np.float32)
    nan[2] = np.nan
    for inner, message in ((Constant(nan), "NaN"), (Constant(np.zeros(6)), r"\(7,\)")):
        for wrapper in (ChunkExecutor(inner), ActionNoise(inner, std=0.1), RecordingPolicy(inner)):
            with pytest.raises(ValueError, match=message):
                wrapper.act(observation())


# --------------------------------------------------------------------------- noise


def test_action_noise_has_the_asked_spread_and_is_seeded():
    std = np.array([0.1, 0.2, 0.05, 0.1, 0.1, 0.1, 0.0], np.float32)
    policy = ActionNoise(Constant([0.2, -0.3, 0, 0, 0, 0, 1]), std=std, seed=0)
    actions = np.stack([policy.act(observation()) for _ in range(3000)])
    assert actions.shape == (3000, 7) and actions.dtype == np.float32
    np.testing.assert_allclose(actions[:, :6].std(0), std[:6], rtol=0.08)
    np.testing.assert_allclose(actions[:, :6].mean(0), [0.2, -0.3, 0, 0, 0, 0], atol=0.015)
    np.testing.assert_array_equal(actions[:, 6], 1.0)  # zero std: the gripper is untouched
    again = ActionNoise(Constant([0.2, -0.3, 0, 0, 0, 0, 1]), std=std, seed=0)
    np.testing.assert_array_equal(again.act(observation()), actions[0])


def test_action_noise_clips_to_the_bounds_and_keeps_chunks():
    policy = ActionNoise(Constant(np.full((3, 7), 0.95)), std=0.5, seed=1)
    chunk = policy.act(observation())
    assert chunk.shape == (3, 7)
    assert chunk.max() == 1.0 and chunk.min() >= -1.0  # some noise pushed past 1 and was clipped
    with pytest.raises(ValueError, match="std"):
        ActionNoise(ZeroPolicy(), std=-0.1)


# --------------------------------------------------------------------------- recording


def test_recording_policy_keeps_every_step_as_arrays():
    policy = RecordingPolicy(ChunkExecutor(CountingChunks(k=2)))
    policy.reset("lift the red cube")
    returned = [policy.act(observation(value=i)) for i in range(3)]
    policy.reset("stack the red cube on the blue cube")
    returned.append(
        policy.act(observation(value=9, instruction="stack the red cube on the blue cube"))
    )
    record = policy.arrays()
    assert len(policy) == 4
    assert record["image"].shape == (4, 8, 8, 3) and record["image"].dtype == np.uint8
    np.testing.assert_array_equal(record["image"][:, 0, 0, 0], [0, 1, 2, 9])
    assert record["instruction"].tolist() == ["lift the red cube"] * 3 + [
        "stack the red cube on the blue cube"
    ]
    np.testing.assert_array_equal(record["action"], np.stack(returned))
    assert record["action"].shape == (4, 7)
    np.testing.assert_array_equal(record["episode"], [0, 0, 0, 1])
    policy.clear()
    with pytest.raises(ValueError, match="nothing recorded"):
        policy.arrays()


def test_recording_policy_stacks_chunks_and_refuses_ragged_records():
    policy = RecordingPolicy(CountingChunks(k=3))
    policy.act(observation())
    policy.act(observation())
    assert policy.arrays()["action"].shape == (2, 3, 7)
    policy.policy = CountingChunks(k=1)
    policy.act(observation())
    with pytest.raises(ValueError, match="differ in shape"):
        policy.arrays()
    sizes = RecordingPolicy(ZeroPolicy())
    sizes.act(observation(size=8))
    sizes.act(observation(size=16))
    with pytest.raises(ValueError, match="images differ"):
        sizes.arrays()


# --------------------------------------------------------------------------- load_policy


def from_directory(path, scale: float = 1.0):
    """A loader for a test policy type: the action is the directory's stored value x scale."""
    value = json.loads((path / "config.json").read_text())["value"]
    return Constant(np.full(7, value * scale))


def test_load_policy_builds_the_builtins_with_options():
    random = load_policy("random", seed=5)
    assert isinstance(random, RandomPolicy)
    np.testing.assert_array_equal(
        random.act(observation()), RandomPolicy(seed=5).act(observation())
    )
    assert isinstance(load_policy("zero"), ZeroPolicy)


def test_load_policy_suggests_the_closest_name():
    with pytest.raises(UnknownNameError, match="did you mean 'random'"):
        load_policy("ranodm")


def test_load_policy_dispatches_checkpoints_on_their_type(tmp_path, monkeypatch):
    monkeypatch.setitem(POLICY_TYPES, "test_constant", "test_policy_wrappers:from_directory")
    (tmp_path / "config.json").write_text(json.dumps({"type": "test_constant", "value": 0.25}))
    policy = load_policy(str(tmp_path), scale=2.0)
    np.testing.assert_allclose(policy.act(observation()), 0.5)
    (tmp_path / "config.json").write_text(json.dumps({"type": "smal_vla"}))
    with pytest.raises(UnknownNameError, match="did you mean 'small_vla'"):
        load_policy(str(tmp_path))


def test_load_policy_explains_missing_or_broken_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_policy(str(tmp_path / "no_such_checkpoint"))
    with pytest.raises(ValueError, match="no config.json"):
        load_policy(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="config.json"):
        load_policy(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"hidden": 3}))
    with pytest.raises(CorruptFileError, match="'type'"):
        load_policy(str(tmp_path))
    with pytest.raises(ValueError, match="non-empty"):
        load_policy("")


def test_load_policy_makes_remote_clients_from_urls():
    from policies.remote import PolicyServerError, RestPolicyClient

    client = load_policy("http://127.0.0.1:9/", timeout=1.0)  # no connection until act()
    assert isinstance(client, RestPolicyClient) and client.url == "http://127.0.0.1:9"
    assert load_policy("http://127.0.0.1:9/act").url == "http://127.0.0.1:9"  # endpoint given
    with pytest.raises(PolicyServerError, match="ws://127.0.0.1:9"):  # connects (and fails) now
        load_policy("ws://127.0.0.1:9", retries=0, timeout=1.0)


# ---------------------------------------------------------------------- action conventions


def test_bridge_actions_arrive_in_this_envs_units():
    from policies.action_conventions import METRES_PER_UNIT, RADIANS_PER_UNIT, convert_action

    # 2 cm forward, a tenth of a radian of yaw, gripper open (Bridge: 1 = open)
    bridge = np.array([0.02, 0.0, -0.01, 0.0, 0.0, 0.1, 1.0])
    ours = convert_action(bridge, "bridge")
    np.testing.assert_allclose(
        ours, [0.02 / METRES_PER_UNIT, 0, -0.01 / METRES_PER_UNIT, 0, 0, 0.1 / RADIANS_PER_UNIT, -1.0],
        rtol=1e-6,
    )  # fmt: skip
    assert convert_action([0, 0, 0, 0, 0, 0, 0.0], "bridge")[6] == 1.0  # closed -> +1 close
    assert convert_action([0, 0, 0, 0, 0, 0, 0.5], "bridge")[6] == 0.0
    far = convert_action([1.0, -1.0, 0, 2.0, 0, 0, 1.0], "bridge")  # a metre: clipped
    np.testing.assert_array_equal(far[:4], [1.0, -1.0, 0.0, 1.0])
    chunk = convert_action(np.tile(bridge, (3, 1)), "bridge")
    assert chunk.shape == (3, 7) and chunk.dtype == np.float32


def test_libero_and_identity_conventions_and_bad_input():
    from policies.action_conventions import convert_action

    libero = np.array([0.8, -0.4, 0.0, 0.2, 0.0, 0.0, -1.0])  # per 20 Hz step, -1 open
    np.testing.assert_allclose(convert_action(libero, "libero"), [0.2, -0.1, 0, 0.05, 0, 0, -1.0])
    np.testing.assert_array_equal(convert_action(libero, "identity"), libero.astype(np.float32))
    with pytest.raises(UnknownNameError, match="did you mean 'bridge'"):
        convert_action(libero, "bridgee")
    with pytest.raises(ValueError, match=r"\(7,\) or \(k, 7\)"):
        convert_action(np.zeros(6), "bridge")
    with pytest.raises(ValueError, match="NaN"):
        convert_action(np.full(7, np.nan), "bridge")


def test_load_policy_wraps_a_policy_in_its_action_convention():
    from policies.registry import load_policy

    class Bridge:  # a stand-in for an OpenVLA server un-normalising to Bridge's units
        name, uses_image = "bridge-vla", False

        def reset(self, instruction):
            pass

        def act(self, obs):
            return np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # "open" in Bridge's units

    from policies.action_conventions import ActionConvention

    wrapped = ActionConvention(Bridge(), "bridge")
    wrapped.reset("pick up the red cube")
    assert wrapped.act({"instruction": "pick up the red cube"})[6] == -1.0  # open here too
    zero = load_policy("zero", action_convention="libero")
    assert isinstance(zero, ActionConvention) and zero.name == "zero"
    with pytest.raises(UnknownNameError, match="action convention"):
        load_policy("zero", action_convention="droid")
