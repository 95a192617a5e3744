"""The edge decisions of a night, directly: crash recovery, the final evaluation, the daemon's
deadline guard, the night's ending status, the one stop escalation, and the night's status
transitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.runbook import load_runbook
from orchestrator.core.state import Night, StateError
from orchestrator.policy import DecisionKind, Observation
from orchestrator.policy.recovery import (
    KILL_WAIT_S,
    ORPHAN_TERM_S,
    Health,
    deadline_grace_s,
    end_status,
    escalation,
    final_eval_decide,
    finished_in_window,
    learned_overrides,
    needs_final_eval,
    next_night,
    no_unrecovered_nonfinite,
    orphan_escalation,
    orphan_health,
    passed_window_status,
    recovered_ending,
    recovery_action,
    unended_reason,
)

ROOT = Path(__file__).resolve().parents[2]
RB = load_runbook(ROOT / "runbooks/demo.yaml")
HEALTHY = Health(True, 3.0, 60.0, "train", 40)
SILENT = Health(False, 400.0, 60.0, "train", 40)


@pytest.mark.parametrize(
    ("alive", "ours", "health", "before", "action"),
    [
        (False, False, None, False, "close"),
        (False, True, None, False, "close"),
        (True, False, HEALTHY, False, "reattach"),
        (True, False, HEALTHY, True, "stop"),  # re-attached once already: never twice
        (True, True, None, False, "stop"),  # this runner's own child: stop, not adopt
        (True, False, SILENT, False, "kill"),  # silent: it would never read the control file
        (True, False, SILENT, True, "kill"),
    ],
)
def test_recovery_action(
    alive: bool, ours: bool, health: Health | None, before: bool, action: str
) -> None:
    assert recovery_action(alive, ours, health, before) == action


def test_recovered_ending_follows_the_events() -> None:
    assert recovered_ending("completed", None, None, False, None)[0] == "finished"
    assert recovered_ending(None, "oom", "CUDA out of memory", True, None) == (
        "oom",
        "CUDA out of memory",
    )
    kind, msg = recovered_ending(None, None, None, True, SILENT)
    assert kind == "stopped" and "no progress for 400 s in phase train (limit 60 s)" in msg
    assert recovered_ending(None, None, None, True, HEALTHY)[1].startswith("stopped after")
    assert "gone" in recovered_ending(None, None, None, False, None)[1]
    # a stopped (not completed) finish is not a finished attempt
    assert recovered_ending("stopped", None, None, False, None)[0] == "stopped"


def test_orphan_health_uses_the_phase_timeout() -> None:
    obs = Observation(
        running=True, started_at=0.0, silent_s=30.0, recent_step_s=1.0, phase="train", step=7
    )
    h = orphan_health(obs, RB)
    assert h.healthy and h.step == 7 and h.timeout_s == RB.progress.step_timeout_s
    unknown = Observation(running=True, started_at=0.0, silent_s=None, phase="startup")
    assert not orphan_health(unknown, RB).healthy  # no way to tell: never healthy
    assert orphan_health(unknown, RB).as_json()["phase"] == "startup"


def test_the_final_eval_is_only_stopped_for_a_hang() -> None:
    quiet = Observation(
        running=True,
        started_at=0.0,
        silent_s=RB.progress.slow_phase_timeout_s + 1,
        phase="eval",
        total_epochs=6,
        epoch=6,
    )
    assert final_eval_decide(quiet, RB, now=1e9).kind is DecisionKind.KILL
    busy = Observation(
        running=True, started_at=0.0, silent_s=5.0, phase="eval", tree_mem=10**12
    )  # far over any ceiling: still not its business
    assert final_eval_decide(busy, RB, now=1e9).kind is DecisionKind.CONTINUE


def test_deadline_grace_and_unended_reasons() -> None:
    assert deadline_grace_s(8 * 3600) == pytest.approx(0.05 * 8 * 3600)
    assert deadline_grace_s(60) == 60.0  # at least a minute
    assert deadline_grace_s(8 * 3600, override_s=0.0) == 0.0
    assert "crashed: boom" in (unended_reason("boom", False, False) or "")
    assert "past its deadline" in (unended_reason(None, True, False) or "")
    assert unended_reason(None, False, True) is None  # the daemon was asked to stop: resume
    assert "without ending" in (unended_reason(None, False, False) or "")


@pytest.mark.parametrize(
    ("completed", "level", "evaluated", "status"),
    [
        (True, "must", True, "succeeded"),
        (True, "stretch", True, "succeeded"),
        (True, "none", True, "partial"),
        (False, "should", True, "partial"),  # stopped early: never "succeeded"
        (False, "none", False, "failed"),
        (True, "none", False, "failed"),
    ],
)
def test_end_status(completed: bool, level: str, evaluated: bool, status: str) -> None:
    assert end_status(completed, level, evaluated) == status


def test_one_escalation_schedule() -> None:
    hb = RB.progress
    graceful = escalation(RB)
    assert graceful.waits == (
        max(hb.slow_phase_timeout_s, 60.0),
        hb.term_grace_s,
        hb.term_grace_s + 10.0,
    )
    assert escalation(RB, hung=True).stop_s == 0.0


def test_night_status_changes_only_along_its_transitions() -> None:
    n = Night(name="n", index=0, config="c", runbook="r")
    n.start()
    first = n.started_at
    n.start()  # a resumed night keeps when it first started
    assert n.status == "running" and n.started_at == first
    n.end("partial", "stopped for the deadline")
    assert n.reason == "stopped for the deadline" and n.ended_at
    with pytest.raises(StateError, match="partial -> running"):
        n.start()
    with pytest.raises(StateError, match="partial -> failed"):
        n.end("failed", "again")
    skipped = Night(name="m", index=1, config="c", runbook="r")
    skipped.end("skipped", "night 1 failed")
    assert skipped.status == "skipped"


@pytest.mark.parametrize(
    ("requires", "otherwise", "previous", "action"),
    [
        ("none", "skip", None, "run"),
        ("none", "skip", "failed", "run"),
        ("previous_succeeded", "skip", "succeeded", "run"),
        ("previous_succeeded", "skip", "partial", "skip"),
        ("previous_succeeded", "repeat_previous", "partial", "repeat"),
        ("previous_succeeded", "repeat_previous", "failed", "repeat"),
        ("previous_succeeded", "repeat_previous", None, "skip"),
    ],
)
def test_the_plan_gate(requires: str, otherwise: str, previous: str | None, action: str) -> None:
    assert next_night(requires, otherwise, previous) == action


def test_a_repeated_night_keeps_its_fallbacks_never_its_faults() -> None:
    got = learned_overrides(
        {"data.batch_size": 24, "training.lr": 1e-4, "faults.nonfinite_at_step": 100}
    )
    assert got == {"data.batch_size": 24, "training.lr": 1e-4}


@pytest.mark.parametrize(
    ("final_eval_epoch", "newest_ckpt_epoch", "needed"),
    [
        (None, None, False),  # nothing to evaluate
        (None, 3, True),  # checkpoints but no evaluation after epoch 0
        (3, 3, False),  # the newest checkpoint was evaluated
        (2, 3, True),  # trained past the last evaluation
        (4, 3, False),  # an evaluation newer than any usable checkpoint (lineage rolled back)
    ],
)
def test_needs_final_eval(
    final_eval_epoch: int | None, newest_ckpt_epoch: int | None, needed: bool
) -> None:
    assert needs_final_eval(final_eval_epoch, newest_ckpt_epoch) is needed


@pytest.mark.parametrize(
    ("completed", "finished_ts", "in_window"),
    [
        (True, 99.0, True),
        (True, 100.0, True),  # at the deadline is in time
        (True, 100.5, False),
        (True, None, False),  # no finished event
        (False, 50.0, False),  # stopped early: not a completed night
    ],
)
def test_finished_in_window(completed: bool, finished_ts: float | None, in_window: bool) -> None:
    assert finished_in_window(completed, finished_ts, deadline=100.0) is in_window


@pytest.mark.parametrize(
    ("last_exit", "evaluated", "ok"),
    [
        ("finished", True, True),
        ("nonfinite", True, False),  # the last attempt died on NaN: not recovered
        ("oom", True, True),  # an earlier NaN fixed by a rung does not count
        (None, False, False),  # no evaluated model: nothing shows it recovered
        ("nonfinite", False, False),
    ],
)
def test_no_unrecovered_nonfinite(last_exit: str | None, evaluated: bool, ok: bool) -> None:
    assert no_unrecovered_nonfinite(last_exit, evaluated) is ok


@pytest.mark.parametrize(
    ("started", "evaluated", "status"),
    [(False, False, "skipped"), (True, True, "partial"), (True, False, "failed")],
)
def test_passed_window_status(started: bool, evaluated: bool, status: str) -> None:
    assert passed_window_status(started, evaluated) == status


def test_the_daemons_orphan_stop_goes_straight_to_sigterm() -> None:
    assert orphan_escalation().waits == (0.0, ORPHAN_TERM_S, KILL_WAIT_S)
    assert orphan_escalation(5.0).waits == (0.0, 5.0, KILL_WAIT_S)
