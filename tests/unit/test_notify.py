"""Notifications: derived from state changes, sent once (also across a restart), never fatal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.core.state import Fallback, Night, State, Success
from orchestrator.schedule.notify import (
    Notifier,
    NotifySpec,
    pending_notes,
    read_sent,
    report_lines,
)

RECORDER = """
import json, os, sys
with open(sys.argv[1], "a") as fh:
    fh.write(json.dumps({"argv": sys.argv[2:], "event": os.environ["HJEPA_EVENT"],
                         "night": os.environ["HJEPA_NIGHT"],
                         "message": os.environ["HJEPA_MESSAGE"],
                         "trigger": os.environ.get("HJEPA_TRIGGER")}) + "\\n")
"""


def recorder(tmp_path: Path) -> tuple[str, Path]:
    script = tmp_path / "rec.py"
    script.write_text(RECORDER)
    got = tmp_path / "got.jsonl"
    return f"{sys.executable} {script} {got}", got


def received(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def fb(trigger: str, action: str) -> Fallback:
    return Fallback(trigger=trigger, action=action, at="2026-01-01T01:00:00+00:00")


def night(index: int, name: str, status: str = "running", **kw) -> Night:
    return Night(name=name, index=index, config="c.yaml", runbook="r.yaml", status=status, **kw)


def test_notes_follow_the_state() -> None:
    st = State(nights=[night(0, "a", fallbacks=[fb("oom", "batch 32 -> 24")]), night(1, "b")])
    assert [n.key for n in pending_notes(st)] == ["fallback:0:0"]
    st.nights[0].status = "failed"
    st.nights[0].reason = "too many attempts"
    keys = [n.key for n in pending_notes(st)]
    assert keys == ["fallback:0:0", "night_end:0", "failed:0"]
    assert "night 1 a failed (too many attempts)" in pending_notes(st)[1].message


def test_sends_each_event_once_with_env_and_message_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    cmd, got = recorder(tmp_path)
    spec = NotifySpec(command=cmd)
    state_dir = tmp_path / "var"
    notifier = Notifier(spec, state_dir)
    st = State(nights=[night(0, "conservative"), night(1, "aggressive", status="pending")])
    notifier(st)  # nothing to say yet
    st.nights[0].fallbacks.append(fb("slow", "epochs 6 -> 5 (live)"))
    notifier(st)
    notifier(st)  # the same state again: no resend
    st.nights[0].status = "succeeded"
    st.nights[0].success = Success(level="should")
    notifier(st)
    notifier.wait(30)
    rows = received(got)
    assert [r["event"] for r in rows] == ["fallback", "night_end"]
    assert rows[0]["trigger"] == "slow" and rows[0]["night"] == "conservative"
    assert rows[1]["argv"] == [rows[1]["message"]]  # the one-line message is the last argument
    assert "night 1 conservative succeeded, success should" in rows[1]["message"]
    # a restarted daemon reads notify.jsonl and does not resend
    again = Notifier(spec, state_dir)
    st.nights[1].status = "failed"
    again(st)
    again.wait(30)
    rows = received(got)
    # the last two commands run in their own threads: either may finish first
    assert [r["event"] for r in rows][:2] == ["fallback", "night_end"]
    assert sorted(r["event"] for r in rows[2:]) == ["failed", "night_end"]
    assert sorted(r["event"] for r in read_sent(state_dir)) == sorted(r["event"] for r in rows)
    assert any("failed" in line for line in report_lines(state_dir))


def test_filter_and_a_broken_or_hanging_command_never_raise(tmp_path: Path) -> None:
    st = State(nights=[night(0, "a", status="partial", fallbacks=[fb("oom", "x")])])
    cmd, got = recorder(tmp_path)
    only_end = Notifier(NotifySpec(command=cmd, on=["night_end"]), tmp_path / "v1")
    only_end(st)
    only_end.wait(30)
    assert [r["event"] for r in received(got)] == ["night_end"]
    broken = Notifier(NotifySpec(command="exit 3"), tmp_path / "v2")
    broken(st)
    broken.wait(30)
    missing = Notifier(NotifySpec(command="/nonexistent/notifier"), tmp_path / "v3")
    missing(st)
    missing.wait(30)
    hang = Notifier(NotifySpec(command="sleep 30", timeout_s=0.5), tmp_path / "v4")
    hang(st)  # returns at once: the command runs in its own thread
    hang.wait(10)
    assert all(not t.is_alive() for t in hang.threads)
    assert len(read_sent(tmp_path / "v4")) == 2  # recorded as sent; the timeout was logged


def test_spec_rejects_unknown_events_and_keys() -> None:
    with pytest.raises(ValidationError):
        NotifySpec(command="x", on=["sunrise"])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        NotifySpec.model_validate({"command": "x", "when": ["fallback"]})


def test_with_notifier_attaches_the_observer_to_the_night_runner(tmp_path: Path) -> None:
    from orchestrator.schedule.notify import with_notifier

    cmd, got = recorder(tmp_path)
    notifier = Notifier(NotifySpec(command=cmd), tmp_path / "var")
    seen: list = []

    def night_fn(store, index, *, stop=None, on_update=None):  # the run_night signature
        seen.append((index, stop))
        on_update(State(nights=[night(0, "demo", status="succeeded")]))

    with_notifier(night_fn, notifier)("store", 0, stop="flag")
    notifier.wait(30)
    assert seen == [(0, "flag")]
    assert [r["event"] for r in received(got)] == ["night_end"]
    assert with_notifier(night_fn, None) is night_fn
