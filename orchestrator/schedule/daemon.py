"""The plan daemon: ``hjepa-night start`` / ``hjepa-night stop``.

    hjepa-night start --plan sequential [--state-dir var] [--now] [--foreground] [--no-tui]
    hjepa-night stop [--state-dir var] [--timeout 120]

``start`` validates the plan and the state file, then (unless ``--foreground``) re-runs itself
detached (``start_new_session``) with ``--foreground --no-tui``, logging to
``STATE_DIR/daemon.log``, and prints the pid, the log and how to watch and stop it.

The daemon (:class:`Daemon`) holds ``fcntl.flock`` on ``STATE_DIR/daemon.lock`` for its whole
life (the lock file names its pid; the kernel drops the lock when the process dies, so a stale
lock is simply taken over) and records itself in ``State.daemon``. The state file is the source
of truth: on every start the daemon reconciles it (windows that passed while nothing ran →
``skipped``/``partial``, pending night-2 decisions made), then rebuilds its APScheduler jobs:

- ``start-i`` at the night's window start, ``misfire_grace_time`` = the window, so a daemon
  (re)started inside the window runs the night with the time left and one started after it
  gets a *missed* event (→ reconcile); a night already ``running`` or ``stopped`` resumes at once;
- ``deadline-i`` at deadline + grace: a night runner still busy then is asked to stop;
- ``report-i`` at the plan's morning report time after the night's deadline.

Jobs only post messages; the main loop (:meth:`Daemon.tick`, time as a parameter) acts on
them, one night at a time, each night in a thread running ``night_fn(store, i, stop=event)``.
While a night runs only the night runner writes the state; the daemon writes before and after.
SIGTERM/SIGINT only set a flag; the loop then asks the night to stop (the worker checkpoints;
the night is stored ``stopped``), saves the state, releases the lock and exits 0 — ``start``
resumes. After ``kill -9`` the same ``start`` resumes too: the night runner stops or adopts the
orphaned worker; workers of nights whose window passed are stopped here (pid + create time).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler

from orchestrator.core.state import ENDED, RESUMABLE, DaemonRecord, Night, State, StateStore
from orchestrator.core.state import parse_iso as _iso
from orchestrator.core.system import System
from orchestrator.policy.recovery import (
    ORPHAN_TERM_S,
    deadline_grace_s,
    orphan_escalation,
    unended_reason,
)
from orchestrator.schedule.plan import (
    Plan,
    at_or_after,
    close_night,
    decide_night,
    local_now,
    next_start,
    reconcile,
)

log = logging.getLogger("hjepa-night.daemon")
NightFn = Callable[..., Any]


def stop_orphan_workers(
    night: Night, grace_s: float = ORPHAN_TERM_S, system: System | None = None
) -> list[int]:
    """Stop every live worker of ``night``'s attempts (pid + create time) through the one
    escalation of the process seam, timed by the policy
    (:func:`~orchestrator.policy.recovery.orphan_escalation`): SIGTERM to its whole process
    group (the worker checkpoints, its DataLoader workers go too), SIGKILL to the group after
    ``grace_s``."""
    sys_ = system or System()
    stopped = []
    for attempt in night.attempts:
        if attempt.pid is None or not sys_.is_alive(attempt.pid, attempt.pid_create_time):
            continue
        log.warning("stopping orphaned worker pid %d of %s", attempt.pid, night.name)
        sys_.stop_group(attempt.pid, attempt.pid_create_time, orphan_escalation(grace_s).waits)
        stopped.append(attempt.pid)
    return stopped


# ------------------------------------------------------------------------------------------
class Daemon:
    """Runs a plan's nights from the state file; see the module docstring."""

    def __init__(
        self,
        store: StateStore,
        plan: Plan,
        *,
        night_fn: NightFn,
        report_fn: Callable[[Path], Any] | None = None,
        deadline_grace_s: float | None = None,
    ) -> None:
        self.store, self.plan = store, plan
        self.night_fn, self.report_fn = night_fn, report_fn
        self.deadline_grace_s = deadline_grace_s
        self.stop_requested = False  # set by the signal handler, nothing else there
        self.messages: queue.Queue[tuple[str, int]] = queue.Queue()
        self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self.scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        self._night_stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: int | None = None
        self._error: str | None = None
        self._deadline_hit = False
        self._stopping = False

    # -- scheduler side: post messages only -------------------------------------------------
    def _post(self, kind: str, index: int) -> None:
        self.messages.put((kind, index))

    def _on_missed(self, event: JobExecutionEvent) -> None:
        kind, _, index = event.job_id.partition("-")
        if kind == "start":
            self.messages.put(("missed", int(index)))

    def _grace(self, night: Night) -> float:
        span = (_iso(night.deadline or "") - _iso(night.window_start or "")).total_seconds()
        return deadline_grace_s(span, self.deadline_grace_s)

    def schedule(self, state: State, now: datetime) -> None:
        """Rebuild every job from the state (the state is the source of truth)."""
        self.scheduler.remove_all_jobs()
        upcoming = next((n for n in state.nights if n.status not in ENDED), None)
        if upcoming is not None and upcoming.window_start and upcoming.deadline:
            i, start, deadline = (
                upcoming.index,
                _iso(upcoming.window_start),
                _iso(upcoming.deadline),
            )
            if upcoming.status in ("running", "stopped"):
                self._post("start", i)  # resume at once: its window is still open
            else:
                grace = max(1, int((deadline - start).total_seconds()))
                self.scheduler.add_job(
                    self._post,
                    "date",
                    run_date=start,
                    args=("start", i),
                    id=f"start-{i}",
                    misfire_grace_time=grace,
                )
            self.scheduler.add_job(
                self._post,
                "date",
                run_date=deadline + timedelta(seconds=self._grace(upcoming)),
                args=("deadline", i),
                id=f"deadline-{i}",
                misfire_grace_time=None,
            )
        if self.plan.report_at:
            for night in state.nights:
                if not night.deadline or night.status == "skipped":
                    continue
                at = at_or_after(self.plan.report_at, _iso(night.deadline))
                if at > now:
                    self.scheduler.add_job(
                        self._post,
                        "date",
                        run_date=at,
                        args=("report", night.index),
                        id=f"report-{night.index}",
                        misfire_grace_time=3600,
                    )

    # -- the loop -------------------------------------------------------------------------
    def advance(self, state: State, now: datetime) -> None:
        """Reconcile passed windows and make every due night-N decision, until stable."""
        for night in state.nights:
            started = night.status in ("running", "stopped")
            if started and night.deadline and _iso(night.deadline) <= now:
                stop_orphan_workers(night)
        while True:
            changed = reconcile(state, now)
            for line in changed:
                log.warning("window passed: %s", line)
            decided = False
            for night in state.nights[1:]:
                prev = state.nights[night.index - 1]
                undecided = not any(d.kind == "plan" for d in night.decisions)
                if night.status == "pending" and prev.status in ENDED and undecided:
                    d = decide_night(state, self.plan, night.index, now)
                    log.info(
                        "plan decision for night %d: %s → %s", night.index + 1, d.trigger, d.action
                    )
                    decided = True
            if not changed and not decided:
                return

    def prepare(self, now: datetime, daemon: DaemonRecord) -> State:
        state = self.store.load()
        self.advance(state, now)
        state.daemon, state.current_night = daemon, None
        state.next_start = next_start(state)
        self.store.save(state)
        self.schedule(state, now)
        return state

    def tick(self, now: datetime) -> bool:
        """One loop iteration; False when the daemon should exit (plan done or stop asked)."""
        if self._thread is not None and not self._thread.is_alive():
            self._night_ended(now)
        if self.stop_requested:
            if self._thread is None:
                return False
            if not self._stopping:
                log.info("stop requested: asking the night to checkpoint and stop")
                self._stopping = True
                self._night_stop.set()
            return True
        while True:
            try:
                kind, index = self.messages.get_nowait()
            except queue.Empty:
                break
            self._handle(kind, index, now)
        if self._thread is None and not self.scheduler.get_jobs() and self.messages.empty():
            state = self.store.load()
            return not all(n.status in ENDED for n in state.nights)
        return True

    def _handle(self, kind: str, index: int, now: datetime) -> None:
        if kind == "report":
            self._report(f"morning report time after night {index + 1}")
        elif kind == "deadline":
            if self._running == index and self._thread is not None:
                log.warning("night %d still running past its deadline: stopping it", index + 1)
                self._deadline_hit = True
                self._night_stop.set()
        elif self._thread is not None:
            log.info(
                "%s for night %d ignored: night %d is running",
                kind,
                index + 1,
                (self._running or 0) + 1,
            )
        elif kind in ("start", "missed"):
            state = self.store.load()
            self.advance(state, now)
            night = state.nights[index]
            if kind == "start" and night.status in RESUMABLE:
                state.current_night = index
                state.next_start = next_start(state)
                self.store.save(state)
                self._launch(index)
            else:
                self.store.save(state)
                self.schedule(state, now)

    def _launch(self, index: int) -> None:
        log.info("night %d starts", index + 1)
        self._night_stop.clear()
        self._running, self._error, self._deadline_hit = index, None, False

        def target() -> None:
            try:
                self.night_fn(self.store, index, stop=self._night_stop)
            except BaseException:
                self._error = traceback.format_exc()

        self._thread = threading.Thread(target=target, name=f"night-{index + 1}", daemon=True)
        self._thread.start()

    def _night_ended(self, now: datetime) -> None:
        index = self._running if self._running is not None else 0
        self._thread, self._running = None, None
        state = self.store.load()
        night = state.nights[index]
        error = self._error.strip().splitlines()[-1] if self._error is not None else None
        if self._error is not None:
            log.error("night runner failed:\n%s", self._error)
        if error is not None or (self._deadline_hit and night.status not in ENDED):
            stop_orphan_workers(night)
        reason = unended_reason(error, self._deadline_hit, self.stop_requested)
        if night.status not in ENDED and reason is not None:
            close_night(night, reason)
        state.current_night = None
        if not self.stop_requested:
            self.advance(state, now)
        state.next_start = next_start(state)
        self.store.save(state)
        log.info("night %d: %s (%s)", index + 1, night.status, night.reason or "")
        if night.status in ENDED:
            self._report(f"night {index + 1} ended")
        if not self.stop_requested:
            self.schedule(state, now)

    def _report(self, why: str) -> None:
        if self.report_fn is None:
            return
        try:
            path = self.report_fn(self.store.dir)
            log.info("report written (%s): %s", why, path)
        except Exception:
            log.error("writing the report failed (%s):\n%s", why, traceback.format_exc())

    def request_stop(self, *_: Any) -> None:
        """Signal handler: only sets the flag; the loop acts on it."""
        self.stop_requested = True

    def run(self, record: DaemonRecord, poll_s: float = 0.5) -> int:
        """The main loop (call from the main thread: it installs SIGTERM/SIGINT handlers)."""
        old = {s: signal.signal(s, self.request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        self.scheduler.start()
        prepared = False
        try:
            self.prepare(local_now(), record)
            prepared = True
            while self.tick(local_now()):
                time.sleep(poll_s)
        finally:
            self.scheduler.shutdown(wait=False)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            if prepared and self._thread is None:
                state = self.store.load()
                state.daemon, state.current_night = None, None
                self.store.save(state)
        done = not self.stop_requested
        log.info("plan finished" if done else "stopped; `hjepa-night start` resumes the plan")
        return 0
