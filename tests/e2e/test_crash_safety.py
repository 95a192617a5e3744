"""Crash safety on the shared demo run: kill -9 of the daemon mid-night 1 (the next start
re-attaches to the live worker: no restart, no step trained twice), a second start refused, a
graceful stop, restarts — and still one worker at a time, nothing lost."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from trainer.events_read import read_events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def night_events(state: dict[str, Any], night: int) -> list[list[dict[str, Any]]]:
    """Each attempt's events, in attempt order."""
    attempts = state["nights"][night]["attempts"]
    return [read_events(Path(a["run_dir"]) / "events.jsonl") for a in attempts]


def test_kill_9_then_start_reattaches_to_the_live_worker(demo_run) -> None:
    s = demo_run.steps
    assert s["orphan_alive_after_kill"] is True  # the situation the restart has to handle
    n1 = s["after_kill"]["nights"][0]
    assert n1["status"] == "running" and s["after_kill"]["daemon_alive"] is False
    assert s["orphan_alive_after_restart"] is True  # adopted, not stopped
    n1 = s["after_reattach"]["nights"][0]
    assert len(n1["attempts"]) == 1 and n1["attempts"][0]["pid"] == s["worker"]
    assert n1["attempts"][0]["exit_kind"] is None  # still the same, running attempt
    reattached = [d for d in n1["decisions"] if d["kind"] == "reattached"]
    assert len(reattached) == 1 and reattached[0]["evidence"]["attempt"] == 1
    events = night_events(demo_run.final, 0)[0]
    assert [e["type"] for e in events].count("started") == 1  # the worker was never restarted
    assert sum(e["type"] == "epoch_end" for e in events) > s["epochs_at_kill"]


def test_second_start_on_a_live_state_dir_is_refused(demo_run) -> None:
    second = demo_run.steps["second_start"]
    assert second.returncode == 1
    assert "already owns" in second.stderr and "pid" in second.stderr


def test_stop_checkpoints_and_leaves_the_night_to_resume(demo_run) -> None:
    s = demo_run.steps
    assert s["stop"].returncode == 0, s["stop"].stdout + s["stop"].stderr
    after = s["after_stop"]
    assert after["daemon"] is None and after["daemon_alive"] is False
    assert after["nights"][0]["status"] == "stopped"
    assert after["nights"][0]["attempts"][-1]["exit_kind"] == "stopped"
    assert s["workers_alive_after_stop"] == []


def test_one_worker_at_a_time(demo_run) -> None:
    spans = []
    for night in range(len(demo_run.final["nights"])):
        for events in night_events(demo_run.final, night):
            if events:
                spans.append((events[0]["ts"], events[-1]["ts"]))
    spans.sort()
    assert len(spans) >= 5  # n1: first (re-attached after kill -9), after stop; n2: 3
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, "two workers overlapped"


def test_no_epoch_trained_twice_past_its_last_checkpoint(demo_run) -> None:
    attempts = night_events(demo_run.final, 0)
    assert len(attempts) == 2  # the kill -9 cost no attempt; only the graceful stop did
    newest_ckpt_step = 0
    epochs_done: list[int] = []
    for i, events in enumerate(attempts):
        if i > 0:
            resumed = [e for e in events if e["type"] == "resumed"]
            assert resumed, f"attempt {i + 1} did not resume"
            assert resumed[0]["step"] == newest_ckpt_step  # from the newest checkpoint, no older
        epochs_done += [e["epoch"] for e in events if e["type"] == "epoch_end"]
        steps = [e["step"] for e in events if e["type"] == "checkpoint" and e.get("verified")]
        newest_ckpt_step = max([newest_ckpt_step, *steps])
    assert epochs_done == sorted(set(epochs_done)), epochs_done  # each epoch ended once
    steps = [e["step"] for events in attempts for e in events if e["type"] == "step"]
    assert steps == sorted(set(steps))  # no step trained twice (the stop checkpoints its step)
    assert epochs_done[-1] == demo_run.final["nights"][0]["epochs_done"]
