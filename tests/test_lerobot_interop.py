"""The published ``lerobot`` package reads a dataset that ``wmgym data collect`` wrote.

``lerobot`` needs torchvision and its own torch, so it lives in its own virtual environment
(``scripts/lerobot_venv.sh``; ``make test`` builds it). Its ``LeRobotDataset`` (video backend
``pyav``) must see exactly the frames, actions, states, tasks and statistics that our reader
sees.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LEROBOT_PYTHON = ROOT / ".venv-lerobot" / "bin" / "python"

pytestmark = [pytest.mark.interop, pytest.mark.sim]

READ_WITH_LEROBOT = """
import json, sys
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

root, out = sys.argv[1], sys.argv[2]
ds = LeRobotDataset("local/wmgym", root=root, video_backend="pyav")
arrays, tasks = {}, {}
for ep in range(ds.meta.total_episodes):
    start = int(ds.meta.episodes["dataset_from_index"][ep])
    stop = int(ds.meta.episodes["dataset_to_index"][ep])
    items = [ds[i] for i in range(start, stop)]
    frames = np.stack([it["observation.images.image"].numpy() for it in items])  # (T, 3, H, W)
    arrays[f"frames{ep}"] = np.round(frames.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    arrays[f"actions{ep}"] = np.stack([it["action"].numpy() for it in items])
    arrays[f"states{ep}"] = np.stack([it["observation.state"].numpy() for it in items])
    tasks[ep] = sorted({it["task"] for it in items})
np.savez(out + ".npz", **arrays)
stats = {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in ds.meta.stats.items()}
json.dump({"episodes": ds.meta.total_episodes, "frames": ds.num_frames, "fps": ds.fps,
           "tasks": tasks, "stats": stats}, open(out + ".json", "w"))
"""


@pytest.fixture(scope="module")
def lerobot_python() -> Path:
    if not LEROBOT_PYTHON.exists():  # make test builds it; say how when run by hand
        pytest.fail(f"{LEROBOT_PYTHON} is missing: run `bash scripts/lerobot_venv.sh` first")
    return LEROBOT_PYTHON


def test_lerobots_own_dataset_class_reads_what_we_collected(
    lerobot_python, lift_push_dataset, tmp_path
):
    from wm_env.dataset.lerobot import LeRobotDataset

    out = tmp_path / "read"
    done = subprocess.run(
        [str(lerobot_python), "-c", READ_WITH_LEROBOT, str(lift_push_dataset), str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(out.with_suffix(".json").read_text())
    ours = LeRobotDataset(lift_push_dataset)
    assert theirs["episodes"] == ours.num_episodes == 2
    assert theirs["frames"] == ours.num_frames and theirs["fps"] == ours.fps
    with np.load(out.with_suffix(".npz")) as arrays:
        for ep in range(ours.num_episodes):
            np.testing.assert_array_equal(arrays[f"frames{ep}"], ours.frames(ep))
            np.testing.assert_array_equal(arrays[f"actions{ep}"], ours.actions(ep))
            np.testing.assert_array_equal(arrays[f"states{ep}"], ours.states(ep))
            assert theirs["tasks"][str(ep)] == [ours.instruction(ep)]
    for feature in ("action", "observation.state"):
        for stat in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(
                theirs["stats"][feature][stat], ours.stats[feature][stat], rtol=1e-6
            )
