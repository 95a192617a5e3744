"""``start`` and ``run`` check the state dir's free disk against what each night writes (its
kept checkpoints and best.pt, preflight's estimate) before accepting it: one line naming the
free space, the path and the need. The free-space reading is given, not the real disk's."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.preflight.checks import GB
from orchestrator.schedule.readiness import check_night

CFG = Path("configs/demo_conservative.yaml")
RB = Path("runbooks/demo.yaml")
BIG = ["model.embed_dim=480", "model.depth=12"]  # ~0.5 GB a checkpoint


def _night(tmp_path: Path, free: int, sets: list[str]):
    return check_night(0, "n", CFG, RB, sets, tmp_path, free_of=lambda _: free)


def test_needed_vs_free_follows_the_model_and_keep_last_k(tmp_path: Path) -> None:
    assert _night(tmp_path, 4 * GB, []).refusal is None  # the demo model: well under 4 GB
    few = _night(tmp_path, 4 * GB, [*BIG, "checkpoint.keep_last_k=2"])
    assert few.refusal is None, few.refusal
    assert any(line.startswith("warning:") and "headroom" in line for line in few.lines)
    many = _night(tmp_path, 4 * GB, [*BIG, "checkpoint.keep_last_k=8"])
    assert many.refusal is not None
    assert "not enough disk: 4.0 GB free in " + str(tmp_path) in many.refusal
    assert "needs ~" in many.refusal and "\n" not in many.refusal
    tight = _night(tmp_path, 1000, [])  # 1000 bytes free: nothing fits
    assert tight.refusal is not None and "0.0 GB free" in tight.refusal


def test_start_and_run_refuse_a_night_that_does_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("orchestrator.preflight.checks.disk_free", lambda _: 1000)
    state_dir = tmp_path / "var"
    state_dir.mkdir()
    assert main(["start", "--plan", "demo", "--state-dir", str(state_dir)]) == 2
    err = capsys.readouterr().err
    assert "not enough disk" in err and f"GB free in {state_dir}" in err and "needs ~" in err
    assert not (state_dir / "state.json").exists() and not (state_dir / "daemon.lock").exists()
    rc = main(["run", "--config", str(CFG), "--window", "5m", "--state-dir", str(state_dir),
               "--no-tui"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "not enough disk" in err and f"GB free in {state_dir}" in err
    assert not (state_dir / "state.json").exists()
