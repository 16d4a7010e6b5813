"""Small benchmark tools: fidelity_compare (fidelity runs in one table), bundle_cost."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from benchmarks.fidelity_compare import comparison_table, main


def fake_run(folder, eef: float, carried: bool = True):
    steps = [float(s) for s in range(1, 41)]
    figures = {
        "states": {"model": {"eef_cm": [eef] * 40, "gripper_cm": [1.0] * 20 + [None] * 20}},
        "pixels": {"model": {"psnr": steps, "ssim": [0.5] * 40, "lpips": [0.1] * 40},
                   "copy": {"psnr": [14.0] * 40, "ssim": [0.7] * 40}},
        "targets": {name: {"value": v} for name, v in {"unmoved_cm@last": 3.0, "moved_cm@last": 9.0,
                    "lost_episodes": 0.25, "success_agreement": 0.8, "false_success": 0.01}.items()},
    }  # fmt: skip
    if carried:
        figures["carried_state"] = {"eef_cm": [eef / 2] * 40}
    folder.mkdir()
    (folder / "fidelity.json").write_text(json.dumps(figures))
    return folder


def test_the_table_has_a_row_per_run_and_the_copy_baseline(tmp_path):
    a, b = fake_run(tmp_path / "a", 4.0), fake_run(tmp_path / "b", 6.0, carried=False)
    lines = comparison_table({"first": a, "second": b}).splitlines()
    assert len(lines) == 5 and lines[-1].startswith("| copy first frame |")
    assert "| first | 4.00 / 4.00 | 2.00 / 2.00 | 1.00 / nan |" in lines[2]
    assert "| 20.00 / 40.00 |" in lines[2] and "| 3.00 / 9.00 | 0.25 |" in lines[2]
    assert "| second | 6.00 / 6.00 | n/a |" in lines[3]
    out = tmp_path / "table.md"
    main([f"first={a}", "--out", str(out)])
    assert out.read_text().count("\n") == 4
    with pytest.raises(FileNotFoundError, match="not a `wmgym eval fidelity` output"):
        comparison_table({"x": tmp_path})
    with pytest.raises(SystemExit):
        main(["no-equals-sign"])


def test_bundle_cost_times_each_bundle_and_writes_the_ratio(tiny_bundle, tmp_path):
    from benchmarks.bundle_cost import main as bundle_cost

    out, other = tmp_path / "cost", shutil.copytree(tiny_bundle, tmp_path / "copy")
    figures = bundle_cost([str(tiny_bundle), str(other), "--batch", "2", "--steps", "1",
                           "--rounds", "2", "--out", str(out)])  # fmt: skip
    assert list(figures["ratio_to_first"]) == [str(tiny_bundle), str(other)]
    assert figures["ratio_to_first"][str(tiny_bundle)] == 1.0
    assert all(ms > 0 for ms in figures["ms_per_frame"].values())
    assert json.loads(out.with_suffix(".json").read_text()) == figures
    assert "| ratio to the first |" in out.with_suffix(".md").read_text()


def test_encoder_study_probe_recovers_a_linear_readout_and_not_noise():
    from benchmarks.encoder_study import probe

    rng = np.random.default_rng(0)
    for dim in (20, 400):  # primal and dual (more dims than samples) solves
        x, test_x = rng.normal(size=(300, dim)), rng.normal(size=(200, dim))
        weights = rng.normal(size=(3, 2))  # the targets are linear in 3 of the features
        fitted, _ = probe(x, x[:, :3] @ weights, test_x, test_x[:, :3] @ weights)
        assert fitted.shape == (2,) and (fitted > 0.6).all()  # dual: at most about n / d
        noise, _ = probe(x, rng.normal(size=(300, 2)), test_x, rng.normal(size=(200, 2)))
        assert (noise < 0.1).all()
    import pandas as pd

    from benchmarks.encoder_study import markdown_table

    text = markdown_table(pd.DataFrame({"space": ["vae"], "eef_r2": [0.5]}))
    assert text.splitlines() == ["| space | eef_r2 |", "|---|---|", "| vae | 0.5 |"]
