"""``hjepa-night run`` on a state dir that already holds a night: resume that night (same
config) or refuse naming what holds the dir — never replace the old night's record."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.core.state import Attempt, Night, PlanRecord, State, StateStore
from orchestrator.night.run_cmd import refuse_over

CFG = "configs/demo_conservative.yaml"
RB = "runbooks/demo.yaml"


def _night(status: str = "running", config: str = CFG, **kw) -> Night:
    n = Night(name="old-night", index=0, config=config, runbook=RB, status=status, **kw)
    n.attempts.append(Attempt(index=1, run_dir="r", overrides=dict(n.overrides)))
    return n


def test_refusals_name_what_holds_the_dir(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert refuse_over(State(), store, CFG, {}, "var") is None
    assert refuse_over(State(nights=[_night()]), store, CFG, {}, "var") is None
    done = refuse_over(State(nights=[_night("succeeded")]), store, CFG, {}, "var")
    assert done is not None and "finished night old-night (succeeded)" in done
    other = refuse_over(State(nights=[_night()]), store, "configs/demo_aggressive.yaml", {}, "v")
    assert other is not None and f"--config {CFG}" in other
    n = _night(overrides={"training.epochs": 3})
    n.overrides["data.batch_size"] = 8  # a fallback after the first attempt
    assert refuse_over(State(nights=[n]), store, CFG, {"training.epochs": 3}, "v") is None
    clash = refuse_over(State(nights=[n]), store, CFG, {"training.epochs": 4}, "v")
    assert clash is not None and "training.epochs" in clash
    plan = State(plan=PlanRecord(name="demo"), nights=[_night("partial")])
    finished_plan = refuse_over(plan, store, CFG, {}, "v")
    assert finished_plan is not None and "finished plan 'demo'" in finished_plan


@pytest.mark.parametrize("status", ["succeeded", "partial", "failed"])
def test_run_over_a_finished_night_refuses_and_leaves_state_byte_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], status: str
) -> None:
    store = StateStore(tmp_path)
    store.save(State(nights=[_night(status)]))
    before = store.path.read_bytes()
    rc = main(["run", "--config", CFG, "--window", "5m", "--state-dir", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "old-night" in err and "another --state-dir" in err
    assert store.path.read_bytes() == before


def test_run_again_after_a_stop_resumes_the_same_night(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A night whose last attempt ended ``stopped`` before any checkpoint: the same command
    resumes it — same name, its attempts kept — instead of writing a new night."""
    store = StateStore(tmp_path)
    n = _night(overrides={"training.epochs": 1}, deadline="2000-01-01T00:00:00+00:00")
    a = n.attempts[0]
    a.run_dir, a.exit_kind, a.ended_at = str(tmp_path / "gone"), "finished", "x"
    store.save(State(nights=[n]))
    main(["run", "--config", CFG, "--window", "5m", "--state-dir", str(tmp_path),
          "--no-tui", "--set", "training.epochs=1"])  # fmt: skip
    out = capsys.readouterr().out
    assert "resuming night old-night" in out
    after = store.load(set_aside=False)
    assert [x.name for x in after.nights] == ["old-night"]
    assert after.nights[0].attempts[0].index == 1
    assert after.nights[0].deadline != "2000-01-01T00:00:00+00:00"  # a past deadline renewed
