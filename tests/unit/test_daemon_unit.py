"""The daemon loop with a stand-in night runner: order, night-2 decision, stop, resume, misfire,
deadline guard, crash of the night runner, the lock."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from orchestrator.core.lock import DaemonLock, lock_owner
from orchestrator.core.state import DaemonRecord, StateStore, now_iso
from orchestrator.schedule.daemon import Daemon
from orchestrator.schedule.plan import build_state, load_plan, local_now

RECORD = DaemonRecord(pid=os.getpid(), started_at=now_iso())


class FakeNight:
    """Stand-in for run_night: marks the night running, then ends it as told per index."""

    def __init__(self, outcomes: dict[int, list[str]]) -> None:
        self.outcomes = outcomes  # index -> one outcome per call: succeeded|partial|wait|raise
        self.calls: list[int] = []

    def __call__(self, store: StateStore, index: int, *, stop: threading.Event) -> Any:
        self.calls.append(index)
        outcome = self.outcomes[index].pop(0)
        state = store.load()
        night = state.nights[index]
        night.status, night.started_at = "running", night.started_at or now_iso()
        store.save(state)
        if outcome == "raise":
            raise RuntimeError("boom in the night runner")
        if outcome == "wait":
            stop.wait(10)
            return night
        night.status, night.reason = outcome, "fake"  # type: ignore[assignment]
        night.overrides["data.batch_size"] = 24
        store.save(state)
        return night


def make(tmp_path: Path, fake: FakeNight, *, window: str = "60s", start: str = "after_previous",
         **kw: Any) -> tuple[Daemon, StateStore, list[Path]]:  # fmt: skip
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data: {dataset: synthetic}\n")
    rb = tmp_path / "rb.yaml"
    rb.write_text("name: test\n")
    spec = {"config": str(cfg), "runbook": str(rb), "start": start, "window": window}
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "report_at": None,
                "nights": [
                    dict(spec, name="safe"),
                    dict(spec, name="bold", requires="previous_succeeded", start="after_previous"),
                ],
            }
        )
    )
    plan = load_plan(plan_file)
    store = StateStore(tmp_path / "var")
    store.save(build_state(plan, plan_file, local_now(), start_now=False))
    reports: list[Path] = []
    daemon = Daemon(store, plan, night_fn=fake, report_fn=reports.append, **kw)
    return daemon, store, reports


def drive(daemon: Daemon, seconds: float = 5.0, until: Any = None) -> bool:
    """Tick until the daemon wants to exit (False) or ``until()`` holds / time is up (True)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not daemon.tick(local_now()):
            return False
        if until is not None and until():
            return True
        time.sleep(0.02)
    return True


def start(daemon: Daemon) -> None:
    daemon.scheduler.start()
    daemon.prepare(local_now(), RECORD)


def test_nights_run_in_order_and_night_two_follows_success(tmp_path: Path) -> None:
    fake = FakeNight({0: ["succeeded"], 1: ["succeeded"]})
    daemon, store, reports = make(tmp_path, fake)
    start(daemon)
    assert drive(daemon) is False  # plan done
    daemon.scheduler.shutdown(wait=False)
    state = store.load()
    assert fake.calls == [0, 1]
    assert [n.name for n in state.nights] == ["n1-safe", "n2-bold"]
    assert [n.status for n in state.nights] == ["succeeded", "succeeded"]
    assert state.nights[1].decisions[0].kind == "plan"
    assert state.current_night is None and state.next_start is None
    assert state.daemon and state.daemon.pid == os.getpid()
    assert len(reports) == 2  # one per night end


def test_night_two_repeats_night_one_after_a_partial_night(tmp_path: Path) -> None:
    fake = FakeNight({0: ["partial"], 1: ["succeeded"]})
    daemon, store, _ = make(tmp_path, fake)
    start(daemon)
    assert drive(daemon) is False  # plan done
    daemon.scheduler.shutdown(wait=False)
    n2 = store.load().nights[1]
    assert n2.name == "n2-safe" and n2.overrides == {"data.batch_size": 24}
    assert "repeat safe" in n2.decisions[0].action


def test_stop_leaves_the_night_running_and_a_new_daemon_resumes_it(tmp_path: Path) -> None:
    fake = FakeNight({0: ["wait", "succeeded"], 1: ["succeeded"]})
    daemon, store, reports = make(tmp_path, fake)
    start(daemon)
    drive(daemon, until=lambda: fake.calls)
    daemon.request_stop()  # what SIGTERM does
    assert drive(daemon) is False
    daemon.scheduler.shutdown(wait=False)
    state = store.load()
    assert state.nights[0].status == "running" and state.nights[1].status == "pending"
    assert reports == []
    # restart: same state, a new daemon
    again = Daemon(store, daemon.plan, night_fn=fake, report_fn=reports.append)
    start(again)
    assert drive(again) is False
    again.scheduler.shutdown(wait=False)
    assert fake.calls == [0, 0, 1]
    assert [n.status for n in store.load().nights] == ["succeeded", "succeeded"]


def test_a_crashing_night_runner_fails_the_night_and_the_plan_goes_on(tmp_path: Path) -> None:
    fake = FakeNight({0: ["raise"], 1: ["succeeded"]})
    daemon, store, _ = make(tmp_path, fake)
    start(daemon)
    assert drive(daemon) is False
    daemon.scheduler.shutdown(wait=False)
    n1, n2 = store.load().nights
    assert n1.status == "failed" and "boom in the night runner" in (n1.reason or "")
    assert n2.name == "n2-safe" and n2.status == "succeeded"


def drive_at(daemon: Daemon, now: datetime, until: Any = None, seconds: float = 5.0) -> bool:
    """Tick at the test's time ``now``, firing the jobs due by then as the scheduler would at
    that hour (the scheduler is paused: no job fires on the wall clock); False when the daemon
    wants to exit, True when ``until()`` holds or the bound on real waiting is up."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for job in daemon.scheduler.get_jobs():
            if job.next_run_time is not None and job.next_run_time <= now:
                daemon.scheduler.remove_job(job.id)
                job.func(*job.args)
        if not daemon.tick(now):
            return False
        if until is not None and until():
            return True
        time.sleep(0.02)
    return True


def test_deadline_guard_stops_an_overrunning_night(tmp_path: Path) -> None:
    fake = FakeNight({0: ["wait"], 1: ["succeeded"]})
    daemon, store, _ = make(tmp_path, fake, window="1h", deadline_grace_s=0.0)
    now = local_now()
    daemon.scheduler.start(paused=True)
    daemon.prepare(now, RECORD)
    deadline = datetime.fromisoformat(store.load().nights[0].deadline or "")

    def night_one(status: str) -> Any:
        return lambda: store.load().nights[0].status == status

    # a second before its deadline the overrunning night is left alone
    assert drive_at(daemon, now, until=lambda: fake.calls) is True
    assert drive_at(daemon, deadline - timedelta(seconds=1), seconds=0.5) is True
    assert fake.calls == [0] and night_one("running")()
    # a second after it, the night is asked to stop, closed as failed, and the plan goes on
    assert drive_at(daemon, deadline + timedelta(seconds=1)) is False
    daemon.scheduler.shutdown(wait=False)
    n1, n2 = store.load().nights
    assert n1.status == "failed" and "past its deadline" in (n1.reason or "")
    assert fake.calls == [0, 1] and n2.status == "succeeded"


def test_restart_inside_the_window_runs_with_the_time_left(tmp_path: Path) -> None:
    fake = FakeNight({0: ["succeeded"], 1: ["succeeded"]})
    daemon, store, _ = make(tmp_path, fake, start="22:00")
    state = store.load()
    now = local_now()
    n1 = state.nights[0]
    n1.window_start = (now - timedelta(hours=1)).isoformat(timespec="seconds")
    n1.deadline = (now + timedelta(hours=1)).isoformat(timespec="seconds")
    store.save(state)
    start(daemon)
    drive(daemon, until=lambda: len(fake.calls) == 2)
    daemon.scheduler.shutdown(wait=False)
    assert fake.calls == [0, 1]
    assert store.load().nights[0].deadline == n1.deadline  # the window is not moved


def test_a_window_that_passed_is_skipped_and_the_future_one_waits(tmp_path: Path) -> None:
    fake = FakeNight({0: [], 1: []})
    daemon, store, _ = make(tmp_path, fake, start="22:00")
    state = store.load()
    now = local_now()
    state.nights[0].window_start = (now - timedelta(hours=9)).isoformat(timespec="seconds")
    state.nights[0].deadline = (now - timedelta(hours=1)).isoformat(timespec="seconds")
    store.save(state)
    daemon.plan.nights[1].start = "22:00"  # night 2 at a fixed time: it waits
    start(daemon)
    assert drive(daemon, seconds=0.5) is True
    jobs = {j.id for j in daemon.scheduler.get_jobs()}
    daemon.scheduler.shutdown(wait=False)
    state = store.load()
    n1, n2 = state.nights
    assert n1.status == "skipped" and "passed while no daemon" in (n1.reason or "")
    assert n2.name == "n2-safe" and n2.status == "pending"  # night 1 did not succeed
    assert state.next_start == n2.window_start
    assert jobs == {"start-1", "deadline-1"}
    assert fake.calls == []


def test_lock_is_exclusive_names_its_owner_and_is_released(tmp_path: Path) -> None:
    first, second = DaemonLock(tmp_path), DaemonLock(tmp_path)
    assert lock_owner(tmp_path) is None
    assert first.acquire()
    owner = lock_owner(tmp_path)
    assert owner and owner["pid"] == os.getpid() and owner["since"]
    assert not second.acquire(wait_s=0.1)
    first.release()
    assert lock_owner(tmp_path) is None
    assert second.acquire()
    second.release()
