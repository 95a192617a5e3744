"""Bad input gets one line naming the file and the fix (exit 2), never a traceback: state dirs
that are files, windows out of range, widths, report destinations, and an output encoding
that cannot show the screen's characters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.core.durations import parse_window
from orchestrator.core.state import Night, State, StateStore
from tests.workerutil import ROOT, env

CFG = str(ROOT / "configs" / "demo_conservative.yaml")


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--config", CFG, "--state-dir", "{f}"],
        ["start", "--plan", "demo", "--state-dir", "{f}"],
        ["start", "--plan", "demo", "--state-dir", "{f}/below"],
        ["init", "{f}"],
        ["stop", "--state-dir", "{f}"],
        ["report", "--state-dir", "{f}"],
        ["status", "--once", "--state-dir", "{f}"],
    ],
)
def test_a_state_dir_that_is_a_file_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    f = tmp_path / "afile"
    f.write_text("mine", encoding="utf-8")
    assert main([a.replace("{f}", str(f)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and str(f) in err
    assert f.read_text(encoding="utf-8") == "mine"


@pytest.mark.parametrize("window", ["1s", "59s", "99999999h", "1e400s", "8d"])
def test_windows_out_of_range_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], window: str
) -> None:
    rc = main(["run", "--config", CFG, "--window", window, "--state-dir", str(tmp_path)])
    assert rc == 2
    assert "--window" in capsys.readouterr().err
    assert not (tmp_path / "state.json").exists()


def test_window_bounds() -> None:
    assert parse_window("8h") == 8 * 3600 and parse_window("1m") == 60
    with pytest.raises(ValueError, match="between 1m and 7d"):
        parse_window("30s")


def _finished_night(state_dir: Path) -> None:
    n = Night(name="n", index=0, config=CFG, runbook="runbooks/demo.yaml", status="failed")
    n.reason = "stopped for the deadline at epoch 0"
    n.started_at = n.ended_at = "2026-12-07T01:00:00+00:00"
    StateStore(state_dir).save(State(nights=[n]))


def test_report_out_a_directory_writes_inside_it_and_nothing_beside(tmp_path: Path) -> None:
    state_dir = tmp_path / "var"
    _finished_night(state_dir)
    out = tmp_path / "reports-here"
    out.mkdir()
    assert main(["report", "--state-dir", str(state_dir), "--out", str(out)]) == 0
    assert [p.suffix for p in out.iterdir()].count(".md") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports-here", "var"]


def test_report_to_an_unwritable_place_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "var"
    _finished_night(state_dir)
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    assert main(["report", "--state-dir", str(state_dir), "--out", str(blocker / "r.md")]) == 1
    err = capsys.readouterr().err
    assert "cannot write the report" in err and "Traceback" not in err


def test_report_and_status_name_a_newer_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state.json").write_text('{"schema_version": 99, "nights": []}', "utf-8")
    assert main(["report", "--state-dir", str(tmp_path)]) == 1
    assert "newer hjepa-night" in capsys.readouterr().err
    main(["status", "--once", "--state-dir", str(tmp_path), "--width", "400"])
    assert "newer hjepa-night" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("verb", [["status", "--once"], ["report"]])
def test_an_ascii_only_output_degrades_characters(tmp_path: Path, verb: list[str]) -> None:
    _finished_night(tmp_path)
    got = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *verb, "--state-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env={**env(), "PYTHONIOENCODING": "ascii"},
    )  # fmt: skip
    assert "Traceback" not in got.stderr and "UnicodeEncodeError" not in got.stderr, got.stderr
    assert got.returncode == 0 and got.stdout.strip()


@pytest.mark.parametrize("key", ["model.embed_dim=-3", "model.depth=0", "model.num_heads=0"])
def test_negative_model_sizes_are_refused_before_a_night_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    """Found by the command-line fuzz test: a negative width validated and crashed the worker."""
    rc = main(["run", "--config", CFG, "--set", key, "--state-dir", str(tmp_path)])
    assert rc == 2
    assert key.split("=")[0].split(".")[1] in capsys.readouterr().err
    assert not (tmp_path / "state.json").exists()
