"""Suites, the resumable episode log, the CSV leaderboards and the report (no world needed)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks.episode_log import EpisodeLog
from benchmarks.leaderboard import (
    load_rows,
    long_table,
    paired_drop,
    policy_table,
    write_leaderboards,
)
from benchmarks.suite import EpisodeKey, load_suite, suite_from_dict
from wm_env.errors import UnknownNameError

SUITE = {
    "name": "t",
    "world": {"type": "world_model", "bundle": "models/default", "num_envs": 4},
    "tasks": ["lift", "push"],
    "seeds": [0, 1, 2],
    "policies": [{"name": "a", "spec": "random"}, {"name": "b", "spec": "zero"}],
    "conditions": [
        {"name": "clean"},
        {"name": "distract", "type": "distractors", "count": 2},
        {"name": "para", "type": "instruction", "mode": "paraphrase"},
    ],
    "judge": {"spec": "probe", "path": "models/probe"},
}


def row(policy, task, condition, seed, index, success, error=None):
    return {
        "policy": policy, "task": task, "condition": condition, "seed": seed, "index": index,
        "start_id": f"{task}-{seed}", "instruction": "lift the red cube", "success": success,
        "score": float(bool(success)), "judge": "probe", "steps": 40, "seconds": 1.0,
        "ms_per_step": 25.0, "error": error,
    }  # fmt: skip


# ------------------------------------------------------------------ suites
def test_suite_round_trip_yaml_and_toml(tmp_path):
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SUITE))
    suite = load_suite(tmp_path / "s.yaml")
    assert suite.episodes_per_cell == 3
    keys = suite.episode_keys()
    assert len(keys) == 2 * 2 * 3 * 3 and len(set(keys)) == len(keys)
    assert suite.condition("distract").editor_id == "paste"
    toml = tmp_path / "s.toml"
    toml.write_text(
        'name = "t"\ntasks = ["lift"]\nseeds = [4]\n[world]\ntype = "sim"\n'
        '[[policies]]\nname = "r"\nspec = "random"\n'
    )
    other = load_suite(toml)
    assert other.world.type == "sim" and other.episode_keys() == [
        EpisodeKey("r", "lift", "clean", 4, 0)
    ]
    # a suite's identity follows its content; overrides change it
    assert suite.hash() == load_suite(tmp_path / "s.yaml").hash()
    assert load_suite(tmp_path / "s.yaml", {"seeds": [0]}).hash() != suite.hash()
    assert suite_from_dict(suite.to_dict()).hash() == suite.hash()  # workers rebuild it exactly


def test_episodes_beyond_the_seeds_cycle_with_new_indices():
    suite = suite_from_dict({**SUITE, "episodes": 5, "conditions": [{"name": "clean"}]})
    keys = [k for k in suite.episode_keys() if k.policy == "a" and k.task == "lift"]
    assert [(k.seed, k.index) for k in keys] == [(0, 0), (1, 1), (2, 2), (0, 3), (1, 4)]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tasks": ["lfit"]}, "lift"),  # did you mean
        ({"world": {"type": "simulator"}}, "sim"),
        ({"world": {"type": "world_model", "dtype": "bf61"}}, "did you mean 'bf16'"),
        ({"world": {"type": "world_model", "num_steps": 0}}, "num_steps"),
        ({"conditions": [{"name": "x", "type": "distractor"}]}, "distractors"),
        ({"policies": [{"name": "a", "spec": "random"}, {"name": "a", "spec": "zero"}]}, "unique"),
        ({"seeds": []}, "at least one"),
        ({"episode_length": 0}, "episode_length"),
        ({"conditions": [{"name": "d", "type": "distractors", "count": 0}]}, "count"),
        ({"policies": [{"name": "a", "spec": "random", "weights": 1}]}, "weights"),
        ({"judgee": {}}, "judge"),
    ],
)
def test_bad_suites_are_refused_with_a_clear_message(change, message):
    with pytest.raises((ValueError, UnknownNameError)) as error:
        suite_from_dict({**SUITE, **change})
    assert message in str(error.value)


def test_suite_files_that_do_not_parse(tmp_path):
    (tmp_path / "s.yaml").write_text("tasks: [lift\n")
    with pytest.raises(ValueError, match="not valid yaml"):
        load_suite(tmp_path / "s.yaml")
    (tmp_path / "s.json").write_text("{}")
    with pytest.raises(ValueError, match=".yaml, .yml or .toml"):
        load_suite(tmp_path / "s.json")
    with pytest.raises(FileNotFoundError):
        load_suite(tmp_path / "missing.yaml")


# ------------------------------------------------------------------ the log
def test_log_resumes_drops_a_torn_line_and_never_duplicates(tmp_path):
    path = tmp_path / "episodes.jsonl"
    log = EpisodeLog(path)
    keys = [EpisodeKey("a", "lift", "clean", s, s) for s in range(3)]
    log.append(row("a", "lift", "clean", 0, 0, True))
    log.append(row("a", "lift", "clean", 1, 1, False))
    with open(path, "ab") as file:  # a kill -9 in the middle of writing the third row
        file.write(json.dumps(row("a", "lift", "clean", 2, 2, True)).encode()[:40])
    with pytest.warns(UserWarning, match="partially written"):
        resumed = EpisodeLog(path)
    assert len(resumed) == 2
    assert resumed.missing(keys) == [keys[2]]
    resumed.append(row("a", "lift", "clean", 2, 2, True))
    again = EpisodeLog(path)
    assert len(again) == 3 and again.missing(keys) == []
    assert len(path.read_text().splitlines()) == 3  # the torn bytes are gone
    with pytest.raises(ValueError, match="twice"):
        again._remember(row("a", "lift", "clean", 2, 2, True))


def test_agreement_replays_only_episodes_not_replayed_before(tmp_path, monkeypatch):
    """An extended agreement run judges replays of its new sim episodes only."""
    from benchmarks import agreement

    asked = []
    crash_at_seed = None

    def fake_replays(suite, sim_dir, rows, out_dir, judges):
        asked.append([(r["seed"], r["index"]) for r in rows])
        for r in rows:  # one batch per episode
            if r["seed"] == crash_at_seed:
                raise KeyboardInterrupt
            yield [
                {"policy": r["policy"], "task": r["task"], "seed": r["seed"], "index": r["index"],
                 "sim_success": bool(r["success"]), "wm_success": r["seed"] % 2 == 0,
                 "wm_score": 0.5, "judge": judge}
                for judge in r["judges"]
            ]  # fmt: skip

    monkeypatch.setattr(agreement, "judge_replays", fake_replays)
    probe = [("probe:probe", None)]
    path = tmp_path / "replays.csv"
    suite = suite_from_dict(SUITE)
    rows = [row("a", "lift", "clean", s, s, s == 1) for s in range(3)]
    rows.append(row("a", "lift", "distract", 0, 0, True))  # not clean: never replayed
    rows.append(row("a", "lift", "clean", 3, 3, None, error="down"))  # errored: never replayed
    crash_at_seed = 1  # interrupted after the first batch: that batch is kept
    with pytest.raises(KeyboardInterrupt):
        agreement.update_replays(suite, tmp_path, rows[:2], path, probe)
    assert pd.read_csv(path)["seed"].tolist() == [0]
    crash_at_seed = None
    asked.clear()
    first = agreement.update_replays(suite, tmp_path, rows[:2], path, probe)
    assert asked == [[(1, 1)]] and len(first) == 2
    extended = agreement.update_replays(suite, tmp_path, rows, path, probe)
    assert asked[1] == [(2, 2)]  # only the new clean episode
    assert extended["seed"].tolist() == [0, 1, 2] and extended["wm_success"].tolist() == [
        True,
        False,
        True,
    ]
    assert pd.read_csv(path)["seed"].tolist() == [0, 1, 2]
    fewer = agreement.update_replays(suite, tmp_path, rows[1:2], path, probe)
    assert len(asked) == 2 and fewer["seed"].tolist() == [1]
    # a second judge: every episode is replayed once more, and only it is asked
    both = agreement.update_replays(suite, tmp_path, rows, path, [*probe, ("state:s", None)])
    assert asked[2] == [(0, 0), (1, 1), (2, 2)] and len(both) == 6
    assert set(both[both["judge"] == "state:s"]["seed"]) == {0, 1, 2}
    assert (
        agreement.update_replays(suite, tmp_path, rows, path, probe)["judge"]
        .eq("probe:probe")
        .all()
        and len(asked) == 3
    )


def test_agreement_plot_labels_of_close_policies_do_not_overlap():
    from benchmarks.agreement import label_offsets

    offsets = label_offsets([(0.0, 0.06), (0.03, 0.06), (0.0, 0.07), (0.9, 0.6)])
    assert len({dy for _, dy in offsets[:3]}) == 3  # three close points: three label heights
    assert offsets[3] == offsets[0]  # a point far from the others keeps the default place


def test_log_rows_for_keys(tmp_path):
    log = EpisodeLog(tmp_path / "episodes.jsonl")
    for seed in range(3):
        log.append(row("a", "lift", "clean", seed, seed, True))
    keys = [EpisodeKey("a", "lift", "clean", s, s) for s in (0, 2, 5)]
    assert [r["seed"] for r in log.rows_for(keys)] == [0, 2]


def test_log_errors_are_kept_and_retried_only_when_asked(tmp_path):
    log = EpisodeLog(tmp_path / "e.jsonl")
    key = EpisodeKey("a", "lift", "clean", 0, 0)
    log.append(row("a", "lift", "clean", 0, 0, None, error="PolicyServerError: down"))
    assert log.missing([key]) == []
    assert log.missing([key], retry_errors=True) == [key]
    log.append(row("a", "lift", "clean", 0, 0, True))  # the retry replaces the error row
    reread = EpisodeLog(tmp_path / "e.jsonl")
    assert len(reread) == 1 and reread.rows[0]["success"] is True


def test_log_refuses_corruption_in_the_middle(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(row("a", "lift", "clean", 0, 0, True)) + "\n{oops\n")
    with pytest.raises(ValueError, match="line 2"):
        EpisodeLog(path)
    with pytest.raises(ValueError, match="unknown row fields"):
        EpisodeLog(tmp_path / "f.jsonl").append({**row("a", "lift", "clean", 0, 0, True), "x": 1})


# ------------------------------------------------------------------ aggregation
def fake_rows():
    rows = []
    for index, seed in enumerate(range(10)):
        for task in ("lift", "push"):
            rows.append(row("good", task, "clean", seed, index, True))
            rows.append(row("good", task, "distract", seed, index, seed % 2 == 0))
            rows.append(row("bad", task, "clean", seed, index, seed < 2))
            rows.append(row("bad", task, "distract", seed, index, seed < 2))
    rows.append(row("bad", "lift", "clean", 10, 10, None, error="server down"))
    rows.append(row("bad", "lift", "clean", 11, 11, None))  # judge abstained
    return rows


def test_policy_table_ranks_counts_and_intervals():
    table = policy_table(load_rows(fake_rows()))
    assert list(table["policy"]) == ["good", "bad"] and list(table["rank"]) == [1, 2]
    good, bad = table.iloc[0], table.iloc[1]
    assert good["episodes"] == 20 and good["success"] == 1.0
    assert bad["episodes"] == 20 and bad["success"] == pytest.approx(4 / 20)
    assert bad["errors"] == 1 and bad["abstained"] == 1  # neither counted as a failure
    assert 0 < bad["success_lo"] < 0.2 < bad["success_hi"] < 0.5
    assert good["drop"] == pytest.approx(0.5) and good["drop_lo"] < 0.5 < good["drop_hi"]
    assert bad["drop"] == pytest.approx(0.0) and bad["drop_lo"] == bad["drop_hi"] == 0.0


def test_long_table_has_pooled_rows_and_drops_per_task():
    table = long_table(load_rows(fake_rows()))
    pooled = table[(table["task"] == "all") & (table["policy"] == "good")].set_index("condition")
    assert pooled.loc["clean", "episodes"] == 20 and pooled.loc["distract", "success"] == 0.5
    assert np.isnan(pooled.loc["clean", "drop"]) and pooled.loc["distract", "drop"] == 0.5
    per_task = table[(table["task"] == "lift") & (table["policy"] == "good")]
    assert set(per_task["condition"]) == {"clean", "distract"}


def test_paired_drop_pairs_on_the_start():
    clean = load_rows([row("p", "lift", "clean", s, s, s < 5) for s in range(10)])
    # perturbed fails exactly where clean succeeded: a paired drop of 0.5 with no variance
    # from start difficulty
    perturbed = load_rows([row("p", "lift", "d", s, s, False) for s in range(10)])
    drop, lo, hi = paired_drop(clean, perturbed, np.random.default_rng(0))
    assert drop == pytest.approx(0.5) and 0.1 < lo < 0.5 < hi < 0.9


def test_written_csvs_have_the_documented_columns_and_provenance(tmp_path):
    from benchmarks.leaderboard import COLUMNS

    provenance = {"bundle_sha256": "abc", "judge": "probe", "git_revision": "r1"}
    main, long = write_leaderboards(fake_rows(), tmp_path, provenance, editors="d=pastex2")
    reread = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(reread["policy"]) == ["good", "bad"]
    for column in ("rank", "success", "success_lo", "success_hi", "drop", "drop_lo", "drop_hi",
                   "episodes", "errors", "bundle_sha256", "judge", "editors", "git_revision"):  # fmt: skip
        assert column in reread.columns
    documented = set(COLUMNS) | set(provenance) | {"editors"}
    assert set(reread.columns) <= documented
    assert set(pd.read_csv(tmp_path / "leaderboard_long.csv").columns) <= documented
    assert (reread["bundle_sha256"] == "abc").all()


def test_report_has_table_plot_and_gif_grid(tmp_path):
    from benchmarks.report import write_report
    from benchmarks.runner import episode_file

    rows = fake_rows()
    frames = np.zeros((5, 16, 16, 3), dtype=np.uint8)
    frames[np.arange(5), np.arange(5) * 3] = 200  # a bar moving down: 5 distinct frames
    for r in rows:
        if r["index"] == 0:
            path = episode_file(
                tmp_path, EpisodeKey(r["policy"], r["task"], r["condition"], r["seed"], 0)
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, frames=frames, actions=np.zeros((4, 7), np.float32))
    main, long = write_leaderboards(rows, tmp_path, {"suite": "t", "judge": "probe"})
    report = write_report(tmp_path, main, long, rows, {"suite": "t", "judge": "probe"})
    text = report.read_text()
    assert "| rank | policy |" in text and "success.png" in text and "grid_lift.gif" in text
    assert (tmp_path / "success.png").stat().st_size > 1000
    import imageio.v3 as iio

    grid = iio.imread(tmp_path / "grid_lift.gif")
    assert grid.shape[0] == 5  # every frame of the episodes
    # 2 policies stacked (frames upscaled 2x + caption bar + pad), 2 conditions side by side
    assert grid.shape[1:3] == (2 * (32 + 28 + 2), 2 * (32 + 2))
    assert "<table" in (tmp_path / "report.html").read_text()


# ------------------------------------------------------------------ agreement
def test_mmrv_and_correlations():
    from benchmarks.agreement import correlations, mmrv

    true = np.array([0.9, 0.5, 0.1])
    assert mmrv(true, true * 0.5) == 0.0  # same order, different scale: no violation
    # the prediction swaps the two best: each of them is violated by a 0.4 gap
    assert mmrv(true, np.array([0.4, 0.6, 0.0])) == pytest.approx((0.4 + 0.4 + 0) / 3)
    stats = correlations(true, np.array([0.8, 0.6, 0.2]))
    assert stats["spearman"] == pytest.approx(1.0) and 0.9 < stats["pearson"] <= 1.0
    assert np.isnan(correlations(true, np.ones(3))["pearson"])  # constant: undefined, not 0


def test_compare_worlds_per_policy_and_bootstrap():
    from benchmarks.agreement import compare, replay_summary

    sim, wm = [], []
    for seed in range(8):
        for policy, p_sim, p_wm in (("hi", 0.9, 0.8), ("mid", 0.5, 0.6), ("lo", 0.1, 0.3)):
            win = (seed + 0.5) / 8 < p_sim
            sim.append(row(policy, "lift", "clean", seed, seed, win))
            wm.append(row(policy, "lift", "clean", seed, seed, (seed + 0.5) / 8 < p_wm))
            sim.append(row(policy, "lift", "distract", seed, seed, win and seed % 2 == 0))
            wm.append(row(policy, "lift", "distract", seed, seed, win))
    table, summary = compare(sim, wm)
    table = table.set_index("policy")
    assert table.loc["hi", "sim_success"] == pytest.approx(7 / 8)
    assert table.loc["lo", "wm_success"] == pytest.approx(2 / 8)
    spearman = summary[(summary["quantity"] == "success") & (summary["metric"] == "spearman")]
    assert spearman["value"].item() == pytest.approx(1.0)
    assert spearman["lo"].item() <= 1.0
    assert set(summary["quantity"]) == {"success", "drop"}
    replays = pd.DataFrame({
        "sim_success": [False, False, False, True, True],
        "wm_success": [True, False, None, True, False],
    })  # fmt: skip
    stats = replay_summary(replays)
    assert stats["hallucinated_success"]["rate"] == 0.5  # 1 of 2 judged (one abstained)
    assert stats["missed_success"]["rate"] == 0.5
    ids = {"policy": "p", "task": "lift", "seed": 0}
    two = pd.DataFrame([
        {**ids, "index": i, "judge": judge, "sim_success": truth, "wm_success": verdict}
        for i, (truth, a, b) in enumerate(
            [(False, True, False), (False, True, True), (True, True, None), (True, False, True)]
        )
        for judge, verdict in (("probe", a), ("state", b))
    ])  # fmt: skip
    stats = replay_summary(two)
    assert stats["hallucinated_success"]["rate"] == 1.0  # the first judge's: the probe's
    assert stats["judges"]["state"]["hallucinated_success"]["rate"] == 0.5
    together = stats["judges"]["all(probe,state)"]
    assert together["hallucinated_success"]["rate"] == 0.5  # both said yes on one of two
    assert together["missed_success"]["rate"] == 0.5  # an abstention does not veto


def test_compare_with_a_calibration_corrects_every_resample_and_measures_the_error():
    """A judge with TPR 0.5 and FPR 0.1 halves and lifts the world model's rates; the corrected
    ones land on the truth, so the absolute error falls while the ranking cannot change."""
    from benchmarks.agreement import compare
    from judges.correction import JudgeCalibration

    calibration = JudgeCalibration("probe:probe", "j", "b", 50, 100, 10, 100)
    sim, wm = [], []
    for seed in range(20):
        for policy, p_sim in (("hi", 0.9), ("mid", 0.5), ("lo", 0.1)):
            p_wm = 0.1 + 0.4 * p_sim  # what this judge reports of the true rate
            sim.append(row(policy, "lift", "clean", seed, seed, (seed + 0.5) / 20 < p_sim))
            wm.append(row(policy, "lift", "clean", seed, seed, (seed + 0.5) / 20 < p_wm))
    table, summary = compare(sim, wm, calibration=calibration)
    table = table.set_index("policy")
    assert table.loc["hi", "wm_success"] == pytest.approx(0.45)
    assert table.loc["hi", "wm_success_calibrated"] == pytest.approx(0.875)
    lo, hi = table.loc["hi", ["wm_success_calibrated_lo", "wm_success_calibrated_hi"]]
    assert lo < 0.875 < hi
    values = summary.set_index(["quantity", "metric"])["value"]
    assert (
        values["success_calibrated", "mean_abs_error"] < 0.05 < values["success", "mean_abs_error"]
    )
    assert values["success_calibrated", "spearman"] == values["success", "spearman"]
    assert "success_calibrated" not in set(compare(sim, wm)[1]["quantity"])


def test_agreement_report_lists_policies_summary_and_replay_judges(tmp_path):
    import json

    from benchmarks.agreement import compare, write_report
    from judges.correction import JudgeCalibration

    sim = [row(p, "lift", c, s, s, (s + p_) % 3 == 0) for p, p_ in (("a", 0), ("b", 1))
           for c in ("clean", "distract") for s in range(6)]  # fmt: skip
    wm = [{**r, "success": not r["success"] if r["seed"] == 0 else r["success"]} for r in sim]
    table, summary = compare(sim, wm, calibration=JudgeCalibration("p", "j", "b", 8, 10, 1, 10))
    table.to_csv(tmp_path / "agreement.csv", index=False)
    summary.to_csv(tmp_path / "agreement_summary.csv", index=False)
    rates = {"rate": 0.1, "lo": 0.0, "hi": 0.3, "episodes": 10}
    stats = {"hallucinated_success": rates, "missed_success": rates}
    (tmp_path / "agreement.json").write_text(json.dumps({
        "split": "heldout", "suite": "heldout", "calibration": "p on b",
        "replays": {**stats, "judges": {"probe:probe": stats, "state:s": stats}},
    }))  # fmt: skip
    text = write_report(tmp_path).read_text()
    assert "split **heldout**" in text and "judge-corrected" in text
    assert "| success_calibrated |" in text and "| drop |" in text
    assert "| state:s | 0.100 [0.00, 0.30] of 10 |" in text
    assert text.index("| a |") < text.index("| b |")  # by sim success


def test_agreement_suite_is_the_default_suite_plus_the_cem_agent(monkeypatch):
    from pathlib import Path

    import policies.expert_plan as expert_plan
    from benchmarks.agreement import AgreementConfig, split_suite
    from benchmarks.runner import build_policy_factory
    from policies.cem import CEMPolicy

    suites = Path(__file__).parents[1] / "benchmarks" / "suites"
    default, agreement = load_suite(suites / "default.yaml"), load_suite(suites / "agreement.yaml")
    assert split_suite(AgreementConfig())[0].resolve() == (suites / "agreement.yaml").resolve()
    assert agreement.policies[:-1] == default.policies and agreement.policies[-1].name == "cem"
    for part in ("world", "tasks", "seeds", "conditions", "judge", "episode_length"):
        assert getattr(agreement, part) == getattr(default, part), part

    asked = []

    def fake_goal(task, seed, resolution=64, num_steps=40):  # the sim is not needed here
        asked.append((task, seed, resolution))
        return np.full((resolution, resolution, 3), 40 * seed, np.uint8)

    monkeypatch.setattr(expert_plan, "expert_final_frame", fake_goal)
    policy = build_policy_factory(agreement)(EpisodeKey("cem", "push", "clean", 2, 0))
    assert isinstance(policy, CEMPolicy) and policy.name == "cem"
    assert asked == [("push", 2, 64)] and policy.goal_latents is not None
    assert policy.replan_every == 4 and policy.config.dims == (0, 1, 2, 6)


def test_run_options_share_the_machines_cores_among_processes(monkeypatch):
    import os

    from benchmarks.runner import RunOptions

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert RunOptions().torch_threads == 8
    assert RunOptions(workers=2).torch_threads == 4
    assert RunOptions(workers=16).torch_threads == 1
    assert RunOptions(threads=3, workers=2).torch_threads == 3


def test_world_options_added_later_change_the_hash_only_when_set():
    """Run directories made before dtype/num_steps/decoder, split and noise existed stay resumable."""
    import hashlib
    import json

    suite = suite_from_dict(SUITE)
    before = suite.to_dict()
    for option in ("dtype", "num_steps", "decoder"):  # the suite as it was hashed then
        del before["world"][option]
    del before["split"]  # added later too, as was each policy's noise
    for policy in before["policies"]:
        del policy["noise"]
    text = json.dumps(before, sort_keys=True, default=str)
    assert suite.hash() == hashlib.sha256(text.encode()).hexdigest()
    for option in ({"dtype": "bf16"}, {"num_steps": 2}, {"decoder": "light"}):
        changed = suite_from_dict({**SUITE, "world": {**SUITE["world"], **option}})
        assert changed.hash() != suite.hash()


def test_a_sim_run_continues_under_another_judge_but_a_world_model_run_does_not():
    """The sim's oracle decides there, so the suite's judge does not change a sim log's rows."""
    from benchmarks.runner import continues

    def run_of(suite):
        return {"suite_config": suite.to_dict()}

    probe = {"spec": "probe", "path": "models/probe"}
    latents = {**probe, "options": {"inputs": "latents"}}
    sim = {**SUITE, "world": {"type": "sim", "bundle": "models/default"}}
    recorded = run_of(suite_from_dict(sim))
    assert continues(recorded, suite_from_dict({**sim, "judge": latents}))
    assert continues(recorded, suite_from_dict({**sim, "judge": latents, "seeds": [0, 5]}))
    assert not continues(recorded, suite_from_dict({**sim, "judge": latents, "episode_length": 9}))
    wm = suite_from_dict(SUITE)
    assert not continues(run_of(wm), suite_from_dict({**SUITE, "judge": latents}))
    assert continues(run_of(wm), suite_from_dict({**SUITE, "seeds": [7]}))
    assert not continues({}, wm) and not continues({"suite_config": {"name": 3}}, wm)


def test_command_line_overrides_of_the_world_and_the_judge(tmp_path):
    from benchmarks.agreement import AgreementConfig
    from benchmarks.bench import LeaderboardConfig, configured_suite

    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps(SUITE))  # JSON is YAML
    plain = configured_suite(LeaderboardConfig(suite=path))
    assert plain == suite_from_dict(SUITE)
    fast = configured_suite(
        LeaderboardConfig(
            suite=path, dtype="bf16", num_steps=1, decoder="light", judge_inputs="latents"
        )
    )
    assert (fast.world.dtype, fast.world.num_steps, fast.world.decoder) == ("bf16", 1, "light")
    assert fast.judge.options == {"inputs": "latents"} and fast.judge.path == "models/probe"
    assert fast.policies == plain.policies and fast.hash() != plain.hash()
    assert {"dtype", "num_steps", "decoder", "judge_path", "judge_inputs"} <= set(
        vars(AgreementConfig())
    )
    other = configured_suite(LeaderboardConfig(suite=path, judge_path="models/probe_latents"))
    assert other.judge.path == "models/probe_latents" and other.judge.options == {}
    with pytest.raises(UnknownNameError, match="did you mean 'bf16'"):
        configured_suite(LeaderboardConfig(suite=path, dtype="bf61"))


def test_throughput_settings_parse_dtype_steps_and_judge_inputs():
    from benchmarks.leaderboard_figures import describe_setting, parse_setting, suite_for

    assert parse_setting("fp32") == ("fp32", None, "frames")
    assert parse_setting(" bf16x2") == ("bf16", 2, "frames")
    assert parse_setting("bf16x1+latents") == ("bf16", 1, "latents")
    assert describe_setting(*parse_setting("fp32")) == "fp32 (default)"
    assert (
        describe_setting(*parse_setting("bf16x1+latents")) == "bf16, 1 steps, judge reads latents"
    )
    suite = suite_from_dict(suite_for({"type": "sim"}, 9, "models/probe", 40, "latents"))
    assert suite.seeds == (0, 1, 2) and suite.judge.options == {"inputs": "latents"}
