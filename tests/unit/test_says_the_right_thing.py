"""Views and endings say what happened: a gracefully stopped night reads ``stopped`` (not
``running``), and a night that never finished an epoch ends ``failed`` (not ``partial``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.core.state import Attempt, Night, State, StateError, StateStore
from orchestrator.policy.recovery import end_status
from orchestrator.views.snapshot import SnapshotSource, shown_night


def _stopped_night() -> Night:
    n = Night(name="n1", index=0, config="c.yaml", runbook="r.yaml", status="running")
    n.attempts.append(Attempt(index=1, run_dir="x", exit_kind="stopped", exit_code=3))
    return n


def test_a_stopped_night_with_nobody_holding_the_dir_reads_stopped(tmp_path: Path, capsys) -> None:
    n = _stopped_night()
    assert shown_night(n, owner_alive=False).status == "stopped"
    assert shown_night(n, owner_alive=True).status == "running"  # a live runner between tries
    StateStore(tmp_path).save(State(nights=[n]))
    assert SnapshotSource(tmp_path).take().night.status == "stopped"  # type: ignore[union-attr]
    main(["status", "--once", "--state-dir", str(tmp_path), "--width", "200"])
    out = capsys.readouterr().out
    assert "stopped" in out and "running" not in out


def test_a_night_that_never_finished_an_epoch_is_failed() -> None:
    assert end_status(False, "none", True, trained_epochs=0) == "failed"
    assert end_status(False, "none", True, trained_epochs=2) == "partial"
    assert end_status(True, "must", True, trained_epochs=2) == "succeeded"


def test_a_stop_request_stores_the_night_stopped_and_start_resumes_it() -> None:
    n = Night(name="n1", index=0, config="c.yaml", runbook="r.yaml")
    n.start()
    first = n.started_at
    n.pause("stopped on request; resumable")
    assert n.status == "stopped" and n.reason and n.ended_at is None
    n.start()  # resumed like a running night: same start, the stop's reason gone
    assert n.status == "running" and n.started_at == first and n.reason is None
    n.pause("again")
    n.end("partial", "window passed")
    assert n.status == "partial"
    fresh = Night(name="n2", index=1, config="c.yaml", runbook="r.yaml")
    with pytest.raises(StateError, match="pending -> stopped"):
        fresh.pause("nothing ran")
