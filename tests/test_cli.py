"""The ``wmgym`` command line (wmgym.cli.main)."""

from __future__ import annotations

import pytest

from wm_env.errors import CorruptFileError
from wmgym.cli import COMMANDS, main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``wmgym argv``; return (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys):
    """--help exits 0 and lists every registered command with its summary."""
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for (group, name), (summary, _) in COMMANDS.items():
        assert f"{group} {name}" in out and summary in out
    assert {"data collect", "data info", "demo sim"} <= {f"{g} {n}" for g, n in COMMANDS}


def test_missing_command_prints_usage_and_fails(capsys):
    """No command: the usage is printed and the exit code is 2."""
    code, out, _ = run([], capsys)
    assert code == 2
    assert "usage: wmgym" in out


def test_mistyped_command_suggests_the_closest(capsys):
    """`wmgym data colect` exits 2 with a did-you-mean on stderr."""
    code, out, err = run(["data", "colect"], capsys)
    assert code == 2
    assert "did you mean 'data collect'" in err
    assert out == ""


def test_mistyped_family_surfaces_did_you_mean(capsys, tmp_path):
    """`wmgym data collect --family lfit` exits 2 with the family did-you-mean on stderr
    (no traceback) and writes nothing."""
    out_dir = tmp_path / "never"
    code, _, err = run(["data", "collect", "--family", "lfit", "--out", str(out_dir)], capsys)
    assert code == 2
    assert "did you mean 'lift'" in err
    assert "Traceback" not in err
    assert not out_dir.exists()


def test_invalid_collect_option_is_a_usage_error(capsys, tmp_path):
    """A value rejected by CollectConfig (episodes=0) exits 2 with the reason."""
    code, out, err = run(
        ["data", "collect", "--episodes", "0", "--out", str(tmp_path / "x")], capsys
    )
    assert code == 2
    assert "episodes must be >= 1" in out + err


def test_collect_help_documents_the_options(capsys):
    """`wmgym data collect --help` exits 0 and shows the config's options."""
    code, out, _ = run(["data", "collect", "--help"], capsys)
    assert code == 0
    for option in ("--family", "--episodes", "--out", "--resolution", "--quality", "--workers"):
        assert option in out


@pytest.mark.sim
def test_data_info_summarises_a_dataset(lift_push_dataset, capsys):
    """`wmgym data info DIR` prints the episode and frame counts and per-family success."""
    from wm_env.dataset.lerobot import LeRobotDataset

    dataset = LeRobotDataset(lift_push_dataset)
    code, out, _ = run(["data", "info", str(lift_push_dataset)], capsys)
    assert code == 0
    assert f"{dataset.num_episodes} episodes, {dataset.num_frames} frames at 5 fps" in out
    assert dataset.num_episodes == 2
    assert "lift" in out and "push" in out
    assert "cameras: image" in out


def test_data_info_check_names_episodes_whose_files_cannot_be_read(blob_dataset, tmp_path, capsys):
    import shutil

    code, out, _ = run(["data", "info", str(blob_dataset), "--check"], capsys)
    assert code == 0 and "all 6 episodes decode in full" in out
    broken = shutil.copytree(blob_dataset, tmp_path / "broken")
    video = next(broken.glob("videos/**/*.mp4"))
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])  # a torn copy
    code, out, _ = run(["data", "info", str(broken), "--check"], capsys)
    assert code == 1 and "episodes cannot be read" in out
    assert f"episode 0: {video}" in out
    parquet = next(broken.glob("data/**/*.parquet"))
    parquet.write_bytes(parquet.read_bytes()[:100])
    code, out, _ = run(["data", "info", str(broken), "--check"], capsys)
    assert code == 1 and str(parquet) in out


def test_validation_errors_print_a_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "no-such-dataset"
    code, out, err = run(["data", "info", str(missing)], capsys)
    assert code == 2 and "error:" in err and "Traceback" not in err and "WMGYM_DEBUG" in err
    monkeypatch.setenv("WMGYM_DEBUG", "1")
    with pytest.raises(CorruptFileError):  # the traceback, for a developer who asks
        main(["data", "info", str(missing)])
