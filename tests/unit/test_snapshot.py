"""Snapshots of recorded state dirs: what the status screen and the report are built from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.core.state import read_snapshot
from orchestrator.views.snapshot import SnapshotSource, load_thresholds, read_night_run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "states"
EVENTS = Path("runs/conservative/attempt-02/events.jsonl")


@pytest.fixture
def running(tmp_path: Path) -> Path:
    dst = tmp_path / "var"
    shutil.copytree(FIXTURES / "night-running", dst)
    return dst


def now_of(state_dir: Path) -> float:
    return float((state_dir / "NOW").read_text())


def test_running_night_snapshot_reads_state_events_samples_and_runbook(running: Path) -> None:
    snap = SnapshotSource(running).take(now=now_of(running))
    assert snap.problem is None and not snap.stale
    assert snap.night is not None and snap.night.name == "conservative"
    assert snap.attempt is not None and snap.attempt.index == 2
    run = snap.run
    assert (run.epochs_done, run.total_epochs, run.epoch) == (12, 50, 13)
    assert run.started is not None and run.started["micro_batch"] == 24
    assert run.last_step is not None and len(run.last_step.levels) == 3
    assert run.last_eval is not None and run.last_eval["epoch"] == 10
    assert run.last_sample is not None and run.last_sample["tree_rss"] > 0
    assert snap.thresholds.memory_ceiling_gb == 28 and snap.thresholds.final_eval_minutes == 20
    # the supervisor's forecast (06:35, its final eval included) misses the 06:00 deadline by
    # 35 min: the reserve is not subtracted a second time
    assert snap.forecast.source == "supervisor"
    assert snap.forecast.margin_s is not None and snap.forecast.margin_s == pytest.approx(-2100)
    assert [f.trigger for f in snap.fallbacks] == ["oom"]


def test_truncated_last_line_is_skipped_then_read_once_complete(running: Path) -> None:
    events = running / EVENTS
    text = events.read_text()
    assert not text.endswith("\n")  # the recording stops mid-line
    src = SnapshotSource(running)
    step_before = src.take(now=now_of(running)).run.step
    partial = text[text.rindex("\n") + 1 :]
    line = {
        "v": 1,
        "type": "step",
        "ts": now_of(running) + 5,
        "epoch": 13,
        "step": 9999,
        "loss": 0.25,
        "loss_levels": [0.1, 0.08, 0.07],
        "grad_norm": 1.0,
        "lr": 1e-4,
        "img_per_s": 6.0,
        "micro_batch": 24,
        "accum_steps": 1,
    }
    # finish the torn line as garbage (a writer killed mid-line), then a real event, half of it
    full = json.dumps(line)
    with events.open("a") as fh:
        fh.write("\n" + full[:20])
    assert src.take().run.step == step_before
    with events.open("a") as fh:
        fh.write(full[20:] + "\n")
    run = src.take().run
    assert run.step == 9999 and run.last_step is not None and run.last_step.loss == 0.25
    assert partial  # the torn line itself never became an event


def test_state_replaced_by_garbage_keeps_previous_state_marked_stale(running: Path) -> None:
    src = SnapshotSource(running)
    assert src.take().state is not None
    (running / "state.json").write_text('{"schema_version": 1, "nights": [')
    snap = src.take()
    assert snap.stale and snap.state is not None and snap.night is not None
    assert snap.problem is None


def test_missing_and_corrupt_state_give_a_problem_not_an_exception(tmp_path: Path) -> None:
    snap = SnapshotSource(tmp_path).take()
    assert snap.state is None and "no state file" in (snap.problem or "")
    (tmp_path / "state.json").write_text("not json")
    snap = SnapshotSource(tmp_path).take()
    assert snap.state is None and "cannot be read" in (snap.problem or "")


def test_missing_run_dirs_and_runbook_read_as_none(running: Path) -> None:
    shutil.rmtree(running / "runs")
    for rb in running.glob("runbook-*.yaml"):
        rb.unlink()
    snap = SnapshotSource(running).take()
    assert snap.problem is None and snap.run.last_step is None and snap.run.last_sample is None
    assert snap.thresholds.memory_ceiling_gb is None and snap.thresholds.problem


def test_bad_runbook_gives_no_thresholds(tmp_path: Path) -> None:
    bad = tmp_path / "rb.yaml"
    bad.write_text("name: x\nmemory: {ceiling_gb: -1, nonsense: 3}\n")
    th = load_thresholds(bad)
    assert th.memory_ceiling_gb is None and th.problem


def test_report_read_keeps_every_attempt_in_order() -> None:
    state = read_snapshot(FIXTURES / "night-fallbacks")
    assert state is not None
    run = read_night_run(FIXTURES / "night-fallbacks", state.nights[0])
    assert sorted({p.attempt for p in run.steps}) == [1, 2, 3]
    assert [f["kind"] for f in run.fatals] == ["oom", "nonfinite"]
    assert run.finished is not None and run.total_epochs == 35
    assert run.sample_peaks["tree_rss"] > 28 * 1024**3  # the OOM spike is in the samples
