"""Held-out agreement: the split label, the held-out check, noisy policy entries, condition subsets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.suite import EpisodeKey, load_suite, suite_from_dict
from wm_env.errors import UnknownNameError

SUITE = {
    "name": "t",
    "world": {"type": "world_model", "bundle": "models/default", "num_envs": 4},
    "tasks": ["lift", "push"],
    "seeds": [0, 1, 2],
    "policies": [{"name": "a", "spec": "random"}, {"name": "b", "spec": "zero"}],
    "conditions": [{"name": "clean"}, {"name": "distract", "type": "distractors", "count": 2}],
}


def test_the_shipped_heldout_suite_is_held_out_from_the_development_suites():
    """Its seeds and policies are in no development suite, and it has the size issue 19 asks."""
    from benchmarks.agreement import DEVELOPMENT_SUITES, SPLIT_SUITES, check_split

    heldout = load_suite(SPLIT_SUITES["heldout"])
    check_split(heldout, "heldout")  # raises if it shares a seed or a policy
    assert len(heldout.policies) >= 10 and len(heldout.seeds) >= 8
    development = [load_suite(path) for path in DEVELOPMENT_SUITES]
    assert all(suite.split == "development" for suite in development)
    used = {seed for suite in development for seed in suite.seeds}
    assert used and not used & set(heldout.seeds)
    # no reset seed of the world model's data (data/sim64: 0-1599, data/sim64_test: 100003-)
    assert all(1600 <= seed < 100003 for seed in heldout.seeds)


def test_heldout_check_names_shared_seeds_and_policies_whatever_they_are_called():
    development = suite_from_dict(SUITE)
    heldout = suite_from_dict(
        {**SUITE, "split": "heldout", "seeds": [2, 9],
         "policies": [{"name": "renamed", "spec": "zero"}, {"name": "c", "spec": "random",
                                                           "noise": 0.1}]}
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"seeds \[2\].*'renamed' is 'b'") as error:
        heldout.check_heldout([development])
    assert "'c'" not in str(error.value)  # a noisy variant is another policy
    clean = suite_from_dict({**SUITE, "split": "heldout", "seeds": [9],
                             "policies": [{"name": "c", "spec": "random", "noise": 0.1}]})  # fmt: skip
    clean.check_heldout([development])
    with pytest.raises(ValueError, match="not 'heldout'"):
        development.check_heldout([clean])


def test_split_is_validated_and_does_not_change_the_hash():
    with pytest.raises(UnknownNameError, match="did you mean 'heldout'"):
        suite_from_dict({**SUITE, "split": "heldot"})
    labelled = suite_from_dict({**SUITE, "split": "heldout"})
    assert labelled.hash() == suite_from_dict(SUITE).hash()
    noisy = {**SUITE, "policies": [{"name": "a", "spec": "random", "noise": 0.2}]}
    plain = {**SUITE, "policies": [{"name": "a", "spec": "random"}]}
    assert suite_from_dict(noisy).hash() != suite_from_dict(plain).hash()
    for bad in (-0.1, "loud", float("nan")):
        with pytest.raises(ValueError, match="noise must be a number"):
            suite_from_dict({**SUITE, "policies": [{"name": "a", "spec": "zero", "noise": bad}]})


def test_agreement_split_picks_the_suite_and_refuses_a_mismatch(tmp_path):
    from benchmarks.agreement import AgreementConfig, check_split, split_suite

    suite, out = split_suite(AgreementConfig(split="heldout"))
    assert suite.name == "heldout.yaml" and str(out) == "outputs/agreement_heldout"
    suite, out = split_suite(AgreementConfig())
    assert suite.name == "agreement.yaml" and str(out) == "outputs/agreement"
    with pytest.raises(UnknownNameError, match="did you mean 'heldout'"):
        split_suite(AgreementConfig(split="held-out"))
    with pytest.raises(ValueError, match="split 'development', but --split heldout"):
        check_split(suite_from_dict(SUITE), "heldout")
    leaky = suite_from_dict({**SUITE, "split": "heldout"})  # seeds 0-2 are development seeds
    with pytest.raises(ValueError, match="is not held out"):
        check_split(leaky, "heldout")


def test_noisy_entries_wrap_the_policy_with_per_episode_noise():
    from benchmarks.runner import build_policy_factory

    suite = suite_from_dict({**SUITE, "policies": [
        {"name": "still", "spec": "zero"}, {"name": "shaky", "spec": "zero", "noise": 0.3}]})  # fmt: skip
    factory = build_policy_factory(suite)
    obs = {"image": np.zeros((64, 64, 3), np.uint8), "instruction": "lift the red cube"}

    def actions(policy, task="lift", index=0):
        agent = factory(EpisodeKey(policy, task, "clean", 0, index))
        agent.reset("lift the red cube")
        assert agent.name == policy
        return np.stack([agent.act(obs) for _ in range(50)])  # (50, 7)

    assert not actions("still")[:, :6].any()  # the zero policy: no motion, gripper open
    shaky = actions("shaky")
    assert 0.2 < shaky[:, :6].std() < 0.4 and np.abs(shaky).max() <= 1.0
    np.testing.assert_array_equal(shaky, actions("shaky"))  # the same episode, the same noise
    assert not np.array_equal(shaky, actions("shaky", index=1))


def test_condition_subset_override_and_resume(tmp_path):
    from benchmarks.bench import LeaderboardConfig, configured_suite
    from benchmarks.runner import continues

    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps(SUITE))
    both = configured_suite(LeaderboardConfig(suite=path))
    clean = configured_suite(LeaderboardConfig(suite=path, conditions=("clean",)))
    assert [c.name for c in clean.conditions] == ["clean"]
    assert {k.condition for k in clean.episode_keys()} == {"clean"}
    with pytest.raises(UnknownNameError, match="did you mean 'distract'"):
        configured_suite(LeaderboardConfig(suite=path, conditions=("distrct",)))
    # a run of both conditions goes on with one, and the other way round
    assert continues({"suite_config": both.to_dict()}, clean)
    assert continues({"suite_config": clean.to_dict()}, both)
    # but not when a condition of the same name changed
    changed = suite_from_dict(
        {**SUITE, "conditions": [{"name": "clean"},
                                 {"name": "distract", "type": "distractors", "count": 3}]}
    )  # fmt: skip
    assert not continues({"suite_config": both.to_dict()}, changed)
    # policies too: added or dropped ones go on, a changed one under the same name does not
    more = suite_from_dict(
        {**SUITE, "policies": [*SUITE["policies"], {"name": "c", "spec": "zero", "noise": 0.1}]}
    )
    assert continues({"suite_config": both.to_dict()}, more)
    assert continues({"suite_config": more.to_dict()}, both)
    renoised = suite_from_dict({**SUITE, "policies": [{"name": "b", "spec": "zero", "noise": 0.1}]})
    assert not continues({"suite_config": both.to_dict()}, renoised)
