"""One attempt of one night: launch the worker, tail its events, sample memory, watch the
heartbeat, act on the policy's live decisions, escalate, and classify how it ended.

    sup = Supervisor(system, runbook, run_dir=..., argv=[...], cwd=..., deadline=...,
                     decide=lambda obs: policy.decide(obs, history, runbook, now, deadline))
    sup.launch()                 # or sup.attach(pid, create_time): a worker left running
    outcome = sup.run()          # or: while (outcome := sup.tick()) is None: ...

States (every transition is in :meth:`Supervisor.tick` / the request helpers, with a
``# FROM -> TO`` comment)::

    RUNNING ──control stop──► STOPPING ──no exit in time──► TERMINATING ──grace──► KILLING
       │                          │                              │                    │
       └──SIGTERM (hang)──────────┼──────────────────────────────┘                    │
       └───────────────────────────── exit seen (any state) ──► EXITED ◄──────────────┘

- Liveness: the newest sign of *progress*: a ``step`` event, or a heartbeat's
  ``mono − progress_age_s`` (the worker's heartbeat thread keeps beating through slow phases and
  reports how long the main loop has not progressed). Silence is measured on the monotonic
  clock: every worker event carries the worker's ``time.monotonic()`` (system-wide on Linux and
  macOS), compared with the supervisor's own; an event without it counts from when it was read.
  Before any event, silence counts from the launch. The Observation carries it as ``silent_s``
  with the run's recent seconds per step (``step_s``), and the policy compares it with the
  phase's timeout — a wall-clock jump (NTP, a laptop waking up) never looks like a hang.
- Memory: every ``runbook.sampling_interval_s`` one :class:`orchestrator.core.system.MemSample` is
  appended to ``RUN_DIR/samples.jsonl`` ({ts, worker_rss, tree_rss, sys_available, swap_used,
  gpu_used, tree_mem, tree_measure, gpu_total, gpu_whole_card, sys_total}); the policy's
  memory check gets ``tree_mem`` (PSS/USS: what the tree really owns: ``Observation.tree_mem``),
  RSS only where the OS gives nothing better, against the host ceiling, and the device
  readings (the worker's, with the device total it reports, and NVML's) against the device
  ceiling; swap growth is measured from the first sample of the attempt.
- A SIGKILL nobody here sent is judged on the last few samples before it and the kernel's
  OOM-kill count since launch (:meth:`orchestrator.core.system.System.oom_kill_counts`):
  ``oom`` (the OOM ladder) only with memory near a ceiling or a kernel count, else
  ``killed`` (restarted as it was; :func:`orchestrator.policy.memory.kill_oom_evidence`).
- Re-attach (:meth:`Supervisor.attach`): a worker left alive by a supervisor that died is
  supervised the same way (events tailed from the start of events.jsonl, so the view is
  complete; sampling, live decisions, control file, group signals). It cannot be wait()ed on,
  so its exit code is read from its events: ``finished`` → 0 (completed) or 3 (stopped),
  ``fatal`` → that kind's code, neither → the negated signal this supervisor last sent it, else
  None (``crash``, or the kind it was killed for).
- Graceful stops (deadline, daemon stop, memory, slow) go through the control file (the worker
  checkpoints, optionally evaluates, and exits 3); a hang goes straight to SIGTERM. A stop not
  honoured in time (:func:`orchestrator.policy.recovery.escalation`: ``slow_phase_timeout_s``,
  at least 60 s, or by the deadline itself) escalates to SIGTERM, then SIGKILL after
  ``term_grace_s``, always to the whole process group — the same schedule crash recovery runs
  blocking through :meth:`orchestrator.core.system.System.stop_group`.
- Cost: one incremental read of events.jsonl per tick (``poll_s``, default 0.5 s) and one psutil
  sample per interval; nothing touches the worker's process except signals.
"""

from __future__ import annotations

import json
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from orchestrator.core.fold import SAMPLES_FILE, RunFold, RunView
from orchestrator.core.runbook import Runbook
from orchestrator.core.system import MemSample, System
from orchestrator.policy import (
    Decision,
    DecisionKind,
    Observation,
    classify_exit,
    kill_oom_evidence,
)
from orchestrator.policy.health import points_of
from orchestrator.policy.recovery import escalation
from trainer.events import (
    EXIT_CODE_OF_KIND,
    EXIT_OK,
    EXIT_STOPPED,
    WORKER_LOG_FILE,
    Control,
    read_control,
    write_control,
)
from trainer.events_read import EventTail

LOG_TAIL_BYTES = 8192
KILL_WINDOW_SAMPLES = 3  # the samples before an exit a SIGKILL is judged on


class Stage(str, Enum):
    """Where the supervisor is on the way from running to exited (see the module docstring)."""

    RUNNING = "running"
    STOPPING = "stopping"  # control stop written, waiting for exit 3
    TERMINATING = "terminating"  # SIGTERM sent to the group
    KILLING = "killing"  # SIGKILL sent to the group
    EXITED = "exited"


@dataclass
class AttemptOutcome:
    exit_code: int | None
    exit_kind: str
    message: str
    view: RunView
    stop_reason: str | None
    pid: int


class Supervisor:
    def __init__(
        self,
        system: System,
        runbook: Runbook,
        *,
        run_dir: str | Path,
        argv: list[str],
        cwd: str | Path,
        deadline: float,
        decide: Callable[[Observation], Decision],
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        stop: threading.Event | None = None,
        poll_s: float = 0.5,
        env: dict[str, str] | None = None,
    ) -> None:
        self.sys, self.rb = system, runbook
        self._escalation = escalation(runbook)  # the one stop → TERM → KILL schedule
        self.run_dir, self.argv, self.cwd = Path(run_dir), argv, cwd
        self.deadline, self.decide = deadline, decide
        self.on_event = on_event or (lambda ev: None)
        self.on_decision = on_decision or (lambda d: None)
        self.stop = stop or threading.Event()
        self.poll_s, self.env = poll_s, env
        self.fold = RunFold(history=256)  # this attempt's events (series kept short)
        self.state = Stage.RUNNING
        self.pid = 0
        self.stop_reason: str | None = None
        self._kill_for: str | None = None
        self._tail = EventTail(self.run_dir / "events.jsonl")
        self._t0 = self._w0 = 0.0
        self._state_since = 0.0
        self._next_sample = 0.0
        self._swap0: int | None = None
        self._last_sample: MemSample | None = None
        self._recent: deque[MemSample] = deque(maxlen=KILL_WINDOW_SAMPLES)
        self._oom_kills0: dict[str, int] = {}  # the kernel's OOM-kill counts at launch
        self.attached = False  # True: a worker this supervisor did not start (no wait())
        self.create_time: float | None = None  # of an attached worker (pid reuse guard)
        self._last_signal: int | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def launch(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pid = self.sys.spawn(self.argv, self.cwd, self.run_dir / WORKER_LOG_FILE, self.env)
        self._oom_kills0 = self.sys.oom_kill_counts(self.pid)
        self._t0, self._w0 = self.sys.monotonic(), self.sys.wall()
        self._state_since = self._t0
        return self.pid

    def attach(self, pid: int, create_time: float | None = None) -> int:
        """Supervise a worker that is already running (its previous supervisor died).

        The caller has checked that ``pid`` with ``create_time`` is that attempt's worker. The
        tail starts at offset 0 of events.jsonl, so the first tick folds every past event into
        the view (and passes it to ``on_event``); the ending is read from the events."""
        self.pid, self.attached = pid, True
        self.create_time = create_time
        self._oom_kills0 = self.sys.oom_kill_counts(pid)
        self._t0, self._w0 = self.sys.monotonic(), self.sys.wall()
        self._state_since = self._t0
        return self.pid

    def run(self) -> AttemptOutcome:
        while True:
            outcome = self.tick()
            if outcome is not None:
                return outcome
            self.sys.sleep(self.poll_s)

    def tick(self) -> AttemptOutcome | None:
        """One iteration: read events, sample, check exit, escalate, ask the policy, act."""
        now_m = self.sys.monotonic()
        now_w = self._w0 + (now_m - self._t0)
        self._read_events()
        if now_m >= self._next_sample:
            self._sample(now_m)
        if self.attached:  # not our child: gone, or its pid now names another process
            exited, code = not self.sys.is_alive(self.pid, self.create_time), None
        else:
            exited, code = self.sys.poll(self.pid)
        if exited:
            return self._finish(code)
        if self.stop.is_set() and self.stop_reason is None:
            self.request_stop("daemon", now_m)
        if self.state is Stage.STOPPING:
            waited = now_m - self._state_since
            if waited > self._escalation.stop_s or now_w > self.deadline:
                self._signal(signal.SIGTERM, now_m)  # STOPPING -> TERMINATING
        if self.state is Stage.TERMINATING:
            if now_m - self._state_since > self._escalation.term_s:
                self._signal(signal.SIGKILL, now_m)  # TERMINATING -> KILLING
            return None
        if self.state is Stage.KILLING:
            return None
        decision = self.decide(self.observation(now_w))
        self._act(decision, now_m)
        return None

    @property
    def view(self) -> RunView:
        """What this attempt's events say so far (:mod:`orchestrator.core.fold`)."""
        return self.fold.view()

    # -- observation ----------------------------------------------------------------------
    def observation(self, now_w: float) -> Observation:
        v, s = self.view, self._last_sample
        swap = None
        if s is not None and s.swap_used is not None and self._swap0 is not None:
            swap = s.swap_used - self._swap0
        now_m = self._t0 + (now_w - self._w0)
        since = v.progress_mono if v.progress_mono is not None else self._t0
        return Observation(
            running=True,
            started_at=self._w0,
            last_heartbeat_at=v.progress_ts,
            silent_s=max(0.0, now_m - since),
            recent_step_s=v.step_s,
            phase=v.phase or "startup",
            epoch=v.epochs_done or 0,
            step=v.step or 0,
            total_epochs=v.total_epochs or 0,
            epoch_end_ts=v.epoch_end_ts,
            epoch_seconds=tuple(v.epoch_seconds),
            eval_seconds=tuple(v.eval_seconds),
            checkpoint_seconds=tuple(v.checkpoint_seconds),
            stop_reason=self.stop_reason,
            tree_mem=(s.tree_mem if s.tree_mem is not None else s.tree_rss) if s else None,
            tree_measure=(s.tree_measure or "rss") if s and s.tree_mem is not None else "rss",
            gpu_used=s.gpu_used if s else None,
            gpu_total=s.gpu_total if s else None,
            gpu_whole_card=bool(s.gpu_whole_card) if s else False,
            device_mem=v.device_mem_now,
            device_total=v.device_total,
            swap_growth=swap,
            sys_available=s.sys_available if s else None,
            sys_total=s.sys_total if s else None,
            health=points_of(v.health),
        )

    def before_exit(self, now_w: float) -> Observation:
        """The observation a SIGKILL is judged on: the peaks of the last few samples (lowest
        system available memory), the worker's newest device reading."""
        obs, recent = self.observation(now_w), list(self._recent)
        if not recent:
            return obs

        def peak(name: str) -> int | None:
            vals = [getattr(x, name) for x in recent if getattr(x, name) is not None]
            return max(vals) if vals else None

        tree = [x.tree_mem if x.tree_mem is not None else x.tree_rss for x in recent]
        avail = [x.sys_available for x in recent if x.sys_available is not None]
        swap, swap0 = peak("swap_used"), self._swap0
        return replace(
            obs,
            tree_mem=max((t for t in tree if t is not None), default=None),
            gpu_used=peak("gpu_used"),
            gpu_whole_card=any(x.gpu_whole_card for x in recent),
            sys_available=min(avail) if avail else None,
            swap_growth=swap - swap0 if swap is not None and swap0 is not None else None,
        )

    # -- actions --------------------------------------------------------------------------
    def _act(self, d: Decision, now_m: float) -> None:
        if d.kind is DecisionKind.CONTINUE:
            if d.trigger:
                self.on_decision(d)
            return
        self.on_decision(d)
        if d.kind is DecisionKind.SET_EPOCHS and d.epochs is not None:
            self._control(epochs=d.epochs)
            self.fold.cut_epochs(d.epochs)
        elif d.kind is DecisionKind.STOP_FOR_DEADLINE:
            self.request_stop("deadline", now_m, final_eval=True)
        elif d.kind is DecisionKind.KILL or (
            d.kind is DecisionKind.RESTART and d.trigger == "hang"
        ):
            self._kill_for = "hang"
            self.stop_reason = self.stop_reason or "hang"
            self._signal(signal.SIGTERM, now_m)  # RUNNING|STOPPING -> TERMINATING
        elif d.kind is DecisionKind.RESTART:
            self._kill_for = d.trigger if d.trigger == "memory" else None
            self.request_stop(d.trigger, now_m)
        elif d.kind is DecisionKind.END_NIGHT:
            self.request_stop("end", now_m, final_eval=True)

    def request_stop(
        self, reason: str, now_m: float | None = None, final_eval: bool = False
    ) -> None:
        """Ask the worker to checkpoint (and evaluate) and exit 3; escalation follows if not."""
        if self.stop_reason is not None and self.state is not Stage.RUNNING:
            return
        self.stop_reason = reason
        self._control(stop=True, final_eval=final_eval)
        self.state = Stage.STOPPING  # RUNNING -> STOPPING
        self._state_since = self.sys.monotonic() if now_m is None else now_m

    def _control(
        self, epochs: int | None = None, stop: bool = False, final_eval: bool = False
    ) -> None:
        prev = read_control(self.run_dir)
        seq = (prev.seq if prev else 0) + 1
        if epochs is None and prev is not None:
            epochs = prev.epochs
        write_control(
            self.run_dir, Control(seq=seq, epochs=epochs, stop=stop, final_eval=final_eval)
        )

    def _signal(self, sig: int, now_m: float) -> None:
        self.sys.signal_group(self.pid, sig)
        self._last_signal = sig
        self.state = Stage.TERMINATING if sig == signal.SIGTERM else Stage.KILLING
        self._state_since = now_m

    # -- reading --------------------------------------------------------------------------
    def _read_events(self) -> None:
        read_mono = self.sys.monotonic()
        for ev in self._tail.poll():
            self.fold.feed(1, (ev,), read_mono)
            self.on_event(ev)

    def _sample(self, now_m: float) -> None:
        self._next_sample = now_m + self.rb.sampling_interval_s
        s = self.sys.sample(self.pid)
        self._last_sample = s
        self._recent.append(s)
        if self._swap0 is None and s.swap_used is not None:
            self._swap0 = s.swap_used
        with (self.run_dir / SAMPLES_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(s.as_json()) + "\n")

    def _finish(self, code: int | None) -> AttemptOutcome:
        self.state = Stage.EXITED  # any -> EXITED
        self.sys.kill_group_leftovers(self.pid)
        self._read_events()
        view = self.view  # the attempt's final facts, folded once
        if self.attached and code is None:
            code = self._code_from_events(view)
        tail = _log_tail(self.run_dir / WORKER_LOG_FILE)
        counts = self.sys.oom_kill_counts(self.pid)
        kernel = sum(max(0, n - self._oom_kills0.get(k, n)) for k, n in counts.items())
        now_w = self._w0 + (self.sys.monotonic() - self._t0)
        kind, message = classify_exit(
            code,
            view.fatal,
            tail,
            killed_for=self._kill_for,
            stop_requested=self.stop_reason is not None,
            oom_evidence=kill_oom_evidence(self.before_exit(now_w), self.rb, kernel),
        )
        return AttemptOutcome(code, kind, message, view, self.stop_reason, self.pid)

    def _code_from_events(self, view: RunView) -> int | None:
        """The exit code of a worker we could not wait() on, as its events tell it."""
        fin, fatal = view.finished, view.fatal
        if fatal is not None and str(fatal.get("kind")) in EXIT_CODE_OF_KIND:
            return EXIT_CODE_OF_KIND[str(fatal["kind"])]
        if fin is not None:
            return EXIT_OK if fin.get("reason", "completed") == "completed" else EXIT_STOPPED
        return -self._last_signal if self._last_signal is not None else None


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
