"""The night runner: one night from its spec in the state file to a judged, evaluated model.

    hjepa-night run --config configs/demo_conservative.yaml --window 10m --state-dir var
    run_night(StateStore("var"), 0, stop=threading.Event())          # what the daemon calls

``run_night`` reads ``state.nights[night_index]`` (config, runbook, base overrides, window,
deadline), then loops: launch an attempt (``STATE_DIR/runs/<night>/attempt-NN/``) under a
:class:`~orchestrator.supervisor.Supervisor`, let the pure policy decide live (epoch cuts,
deadline stop, kills) and after each ending (restart with the next rung, or end the night),
and record everything in the state file (atomically, on every change): attempts (pid and its
create time, overrides, resume checkpoint, exit code/kind/message), decisions, fallbacks,
forecasts, baseline and final metrics, best checkpoint, success, status and reason.

Resume rules:
- Checkpoints form a lineage: an attempt that resumes from a checkpoint at step S supersedes
  every earlier checkpoint after S (a roll-back abandons them). "Newest" is the newest of the
  lineage; a fresh attempt is started from step 0 only when the lineage is empty.
- A last attempt with no ``exit_kind`` belongs to a supervisor that died. If its pid is alive
  with the same create time and healthy (:func:`orphan_health`: a progress sign in its
  events.jsonl within the phase's timeout, on the events' ``mono`` clock), a new supervisor
  re-attaches to it (decision ``reattached``): same attempt index and run dir, supervised to
  its end, the exit read from its events — a daemon crash costs no training. A live worker
  that is silent is SIGTERMed then SIGKILLed (its group), one that is merely not ours to adopt
  (this runner spawned it) is asked to stop first (control → SIGTERM → SIGKILL); then the night
  continues from the newest checkpoint. Never two workers at once.
- A last attempt that finished is finalised, not re-run. A recorded restart decision that has
  no attempt after it is carried out, not decided again (rungs are never applied twice).
- ``stop`` set: the worker checkpoints and exits; the attempt is ``stopped``, the night stays
  ``running`` and the next ``run_night`` resumes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from orchestrator import forecast
from orchestrator.fold import RunFold, RunView, fold_run_dir, metrics_of
from orchestrator.policy import (
    CheckpointRef,
    ConfigFacts,
    Decision,
    DecisionKind,
    NightHistory,
    Observation,
    decide,
    judge,
)
from orchestrator.policy.recovery import (
    Health,
    end_status,
    final_eval_decide,
    recovered_ending,
    recovery_action,
)
from orchestrator.policy.recovery import orphan_health as policy_orphan_health
from orchestrator.runbook import (
    FEATURE_KEYS,
    Runbook,
    RunbookError,
    default_runbook_for,
    load_runbook,
)
from orchestrator.state import (
    Attempt,
    Fallback,
    Forecast,
    Night,
    State,
    StateStore,
    Success,
    now_iso,
    parse_iso,
)
from orchestrator.state import Decision as DecisionRecord
from orchestrator.supervisor import AttemptOutcome, Supervisor
from orchestrator.system import System
from trainer.config import Config, ConfigError, load_config
from trainer.events import (
    EVENTS_FILE,
    FAULTS_FIRED_FILE,
    Control,
    atomic_write_text,
    read_events,
    write_control,
)

ROOT = Path(__file__).resolve().parent.parent
FINISHED_KINDS = ("succeeded", "partial", "failed", "skipped")
RUNG_SKIPPED = "rung_skipped"  # a rung whose overrides the recipe's config schema rejects
RUNNER_ERROR = "runner_error"  # an exception inside the night runner itself
MAX_RUNG_SKIPS = 20


# ---------------------------------------------------------------------------------------------
# reading the night back from the state file
def override_args(overrides: dict[str, Any]) -> list[str]:
    """{key: value} → ["key=<json>"] (JSON is YAML, so the worker's --set parses it back)."""
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def config_facts(cfg: Config) -> ConfigFacts:
    on = {}
    for feature, key in FEATURE_KEYS.items():
        section, name = key.split(".")
        on[feature] = bool(getattr(getattr(cfg, section), name))
    return ConfigFacts(
        micro_batch=cfg.data.batch_size,
        accum_steps=cfg.training.accumulation_steps,
        lr=cfg.training.lr,
        epochs=cfg.training.epochs,
        eval_frequency=cfg.evaluation.eval_frequency,
        features=on,
        datasets=tuple(d.name for d in cfg.data.datasets),
    )


def attempt_view(att: Attempt) -> RunView:
    """Every event of ``att`` so far, folded (:mod:`orchestrator.fold`)."""
    return fold_run_dir(att.run_dir, att.index)


def lineage(night: Night) -> list[CheckpointRef]:
    """Usable checkpoints of the current lineage (see the module docstring), oldest first."""
    refs: list[CheckpointRef] = []
    for att in night.attempts:
        if att.resume_from is None:
            refs = []
        else:
            start = next((r for r in refs if r.path == att.resume_from), None)
            if start is not None:
                refs = [r for r in refs if r.step <= start.step]
        for ev in attempt_view(att).checkpoints:
            if ev.get("verified", True) and Path(str(ev["path"])).is_file():
                refs.append(CheckpointRef(str(ev["path"]), int(ev["epoch"]), int(ev["step"]),
                                          float(ev.get("ts", 0.0))))
    return [r for r in refs if Path(r.path).is_file()]


def newest(refs: list[CheckpointRef]) -> CheckpointRef | None:
    return max(refs, key=lambda r: (r.step, r.ts)) if refs else None


def best_of(night: Night, refs: list[CheckpointRef]) -> str | None:
    """The best checkpoint by the config's ``checkpoint.metric`` among the lineage's usable
    ones: the newest ``best`` event (the worker compares by metric and mode) whose checkpoint
    is still in the lineage, else that attempt's ``best.pt`` copy (pruning may have removed the
    original); None when no attempt reported one."""
    usable = {r.path for r in refs}
    for att in reversed(night.attempts):
        for ev in reversed(attempt_view(att).bests):
            path = str(ev.get("path"))
            if path in usable:
                return path
            copy = Path(path).parent / "best.pt"
            if copy.is_file():
                return str(copy)
    return None


def build_history(night: Night, cfg: Config, base_cfg: Config) -> NightHistory:
    rungs: dict[str, int] = {}
    disabled: list[str] = []
    taken = [fb.evidence for fb in night.fallbacks]
    taken += [d.evidence for d in night.decisions if d.kind == RUNG_SKIPPED]
    for evidence in taken:
        ladder, rung = evidence.get("ladder"), evidence.get("rung")
        if isinstance(ladder, str) and isinstance(rung, int):
            rungs[ladder] = max(rungs.get(ladder, 0), rung + 1)
        if ladder == "features" and isinstance(evidence.get("feature"), str):
            disabled.append(evidence["feature"])
    best, without = -1, 0
    for att in night.attempts:
        steps = [int(c["step"]) for c in attempt_view(att).checkpoints]
        top = max(steps, default=-1)
        if att.exit_kind in (None, "finished"):
            continue
        if top > best:
            best, without = top, 0
        elif att.exit_kind not in ("stopped",):
            without += 1
    refs = lineage(night)
    top_ref = newest(refs)
    return NightHistory(
        attempts=len(night.attempts),
        attempts_without_progress=without,
        config=config_facts(cfg),
        base_effective_batch=base_cfg.effective_batch,
        overrides=dict(night.overrides),
        rungs_used=rungs,
        disabled_features=tuple(disabled),
        checkpoints=tuple(refs),
        best_checkpoint=top_ref.path if top_ref else None,
        memory_warned=any(d.trigger == "memory" and d.kind == "continue" for d in night.decisions),
    )


def orphan_health(events: list[dict[str, Any]], rb: Runbook, now_mono: float, now_wall: float,
                  created_at: float | None) -> dict[str, Any]:
    """Whether a worker left running by a dead supervisor still makes progress (the policy's
    :func:`~orchestrator.policy.recovery.orphan_health` on what its events say).

    Silence = now − the newest progress sign (:mod:`orchestrator.fold`), on the events' ``mono``
    clock (the worker's ``time.monotonic()``, system-wide on Linux/macOS) against ``now_mono``;
    events without ``mono`` count on the wall clock against ``now_wall``; no progress event at
    all: silence since the process was created (``created_at``, wall; unknown → never
    healthy). Returns ``{healthy, silent_s, timeout_s, phase, step}``."""
    fold = RunFold()
    fold.feed(1, events)
    v = fold.view()
    if v.progress_mono is not None:
        silent: float | None = now_mono - v.progress_mono
    elif v.progress_ts is not None:
        silent = now_wall - v.progress_ts
    else:
        silent = now_wall - created_at if created_at is not None else None
    obs = Observation(running=True, started_at=0.0, silent_s=silent, recent_step_s=v.step_s,
                      phase=v.phase or "startup", step=v.step or 0)
    return policy_orphan_health(obs, rb).as_json()


def _stop_reason(night: Night, attempt_index: int) -> str | None:
    reason = None
    for d in night.decisions:
        if d.evidence.get("attempt") != attempt_index:
            continue
        if d.kind == "stop_for_deadline":
            reason = "deadline"
        elif d.kind == "stop":
            reason = str(d.evidence.get("reason", "daemon"))
        elif d.kind == "restart" and d.trigger in ("slow", "memory", "hang"):
            reason = d.trigger
    return reason


def ended_observation(att: Attempt, view: RunView, stop_reason: str | None) -> Observation:
    fatal = view.fatal or {}
    return Observation(
        running=False,
        started_at=parse_iso(att.started_at).timestamp() if att.started_at else 0.0,
        last_heartbeat_at=view.progress_ts,
        phase=view.phase or "startup",
        epoch=view.epochs_done or 0,
        step=view.step or 0,
        total_epochs=view.total_epochs or 0,
        stop_reason=stop_reason,
        exit_kind=att.exit_kind,
        exit_code=att.exit_code,
        message=att.message or "",
        fatal_feature=fatal.get("feature"),
        fatal_step=fatal.get("step"),
        finished_reason=(view.finished or {}).get("reason"),
    )


# ---------------------------------------------------------------------------------------------
class NightRunner:
    """Holds one night's moving parts; :func:`run_night` is the public entry."""

    def __init__(self, store: StateStore, index: int, stop: threading.Event, system: System,
                 on_update: Callable[[State], None] | None,
                 worker: list[str] | None = None) -> None:
        self.store, self.index, self.stop, self.sys = store, index, stop, system
        self.worker = worker or [sys.executable, "-m", "trainer"]  # the worker command
        self.on_update = on_update or (lambda s: None)
        self.state = store.load()
        if not 0 <= index < len(self.state.nights):
            raise ValueError(f"night {index} is not in {store.path}")
        n = self.night
        self.rb: Runbook = load_runbook(n.runbook)
        if n.deadline:
            self.deadline = parse_iso(n.deadline).timestamp()
        else:
            start = parse_iso(n.window_start).timestamp() if n.window_start else time.time()
            self.deadline = start + self.rb.window_hours * 3600
            n.deadline = now_iso(self.deadline)
        base = n.attempts[0].overrides if n.attempts else n.overrides
        self.base_cfg = load_config(n.config, override_args(base))
        self.runs = store.dir / "runs" / n.name
        self._reattached: set[int] = set()  # attempts re-attached by this runner (never twice)

    @property
    def night(self) -> Night:
        return self.state.nights[self.index]

    def save(self) -> None:
        self.store.save(self.state)
        self.on_update(self.state)

    def cfg(self) -> Config:
        return load_config(self.night.config, override_args(self.night.overrides))

    def worker_sets(self) -> list[str]:
        """The worker's ``--set`` items: the runbook's limits the worker enforces itself, then
        the night's overrides (which win). Derived from the state alone."""
        sets: dict[str, Any] = {
            "training.max_consecutive_overflows": self.rb.limits.max_consecutive_overflows,
        }
        sets.update(self.night.overrides)
        return override_args(sets)

    def history(self) -> NightHistory:
        return build_history(self.night, self.cfg(), self.base_cfg)

    # -- recording ------------------------------------------------------------------------
    def record(self, d: Decision, attempt: int | None, kind: str | None = None) -> None:
        """Write a decision (and its fallback) into the state file, with its overrides.

        A decision is state, not a message: the config keys it changes (``d.overrides``: epochs,
        batch and accumulation, LR, features, dataset, warm-up, clip) go into the night's
        overrides in the same atomic save, BEFORE the caller sends anything to a live worker or
        launches the next attempt; every attempt is launched from those overrides alone.
        """
        n, at = self.night, now_iso()
        n.overrides.update(d.overrides)
        ev = dict(d.evidence, attempt=attempt)
        if d.overrides:
            ev.setdefault("overrides", dict(d.overrides))
        n.decisions.append(DecisionRecord(kind=kind or d.kind.value, trigger=d.trigger,
                                          action=d.action, at=at, evidence=ev))
        if d.fallback:
            n.fallbacks.append(Fallback(trigger=d.trigger, action=d.action, at=at,
                                        evidence=ev, effect=d.effect, attempt=attempt))
        self.save()

    def on_event(self, ev: dict[str, Any], view: Callable[[], RunView]) -> None:
        n, kind = self.night, ev.get("type")
        if kind == "started":
            n.device = str(ev.get("device"))
            n.epochs_planned = int(ev.get("epochs", 0)) or n.epochs_planned
        elif kind == "eval" and int(ev.get("epoch", -1)) == 0 and n.baseline_metrics is None:
            n.baseline_metrics = metrics_of(ev)
        elif kind == "eval":
            n.final_metrics = metrics_of(ev)
        elif kind == "best":
            n.best_checkpoint = str(ev.get("path"))
        elif kind == "control" and ev.get("epochs"):
            n.epochs_planned = int(ev["epochs"])
        elif kind == "epoch_end":
            n.epochs_done = int(ev["epoch"])
            n.epochs_planned = int(ev.get("total_epochs", n.epochs_planned or 0))
            self._forecast(view())
        else:
            return
        self.save()

    def _forecast(self, v: RunView) -> None:
        end = forecast.finish(v.epoch_seconds, v.eval_seconds, v.checkpoint_seconds,
                              v.epoch_end_ts, v.epochs_done or 0, v.total_epochs or 0,
                              self.rb.final_eval_s)
        if end is None:
            return
        self.night.forecasts.append(Forecast(at=now_iso(), epoch=v.epochs_done or 0,
                                             projected_finish=now_iso(end),
                                             deadline=self.night.deadline))

    # -- one attempt ----------------------------------------------------------------------
    def launch(self, resume_from: str | None) -> AttemptOutcome:
        """Record the attempt in the state file, THEN spawn its worker, then record the pid.

        A crash between the two saves leaves an attempt with no pid: :meth:`adopt_unrecorded`
        finds its worker (if it was spawned) by its ``--run-dir``. An attempt dir is never
        reused: one left on disk by an attempt that was never recorded is moved aside."""
        n = self.night
        idx = len(n.attempts) + 1
        run_dir = self.runs / f"attempt-{idx:02d}"
        if run_dir.exists():
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.stale-{int(time.time())}"))
        argv = [*self.worker, "--config", str(Path(n.config).resolve()), "--run-dir",
                str(run_dir)]
        if resume_from:
            argv += ["--resume", resume_from]
        for item in self.worker_sets():
            argv += ["--set", item]
        att = Attempt(index=idx, run_dir=str(run_dir), overrides=dict(n.overrides),
                      resume_from=resume_from, started_at=now_iso())
        n.attempts.append(att)
        self.save()  # recorded before the spawn
        run_dir.mkdir(parents=True, exist_ok=True)
        self._carry_fired_faults(run_dir)
        sup = self._supervisor(att, argv)
        att.pid = sup.launch()
        att.pid_create_time = self.sys.create_time(att.pid)
        self.save()
        return self._supervise(att, sup)

    def _supervisor(self, att: Attempt, argv: list[str], already_folded: int = 0) -> Supervisor:
        """A Supervisor for ``att`` wired to this night: the policy with the night's history,
        its events folded into the state (all but the first ``already_folded``, which a
        previous runner recorded), its decisions recorded before they act."""
        history = [self.history()]
        sup = Supervisor(
            self.sys, self.rb, run_dir=Path(att.run_dir), argv=argv, cwd=os.getcwd(),
            deadline=self.deadline,
            decide=lambda obs: decide(obs, history[0], self.rb, self.sys.wall(), self.deadline),
            stop=self.stop, env=worker_env(),
        )
        seen = [0]

        def on_event(ev: dict[str, Any]) -> None:
            seen[0] += 1
            if seen[0] > already_folded:
                self.on_event(ev, lambda: sup.view)

        def on_decision(d: Decision) -> None:
            self.record(d, att.index)
            history[0] = self.history()

        sup.on_event, sup.on_decision = on_event, on_decision
        return sup

    def _supervise(self, att: Attempt, sup: Supervisor) -> AttemptOutcome:
        out = sup.run()
        if out.stop_reason == "daemon":
            self.record(Decision(DecisionKind.CONTINUE, "daemon", "stopped on request (daemon)",
                                 {"reason": "daemon"}), att.index, kind="stop")
        self._close_attempt(att, out.exit_code, out.exit_kind, out.message, out.view)
        return out

    def _close_attempt(self, att: Attempt, code: int | None, kind: str, message: str,
                       view: RunView) -> None:
        att.exit_code, att.exit_kind, att.message = code, kind, message  # type: ignore[assignment]
        att.ended_at = now_iso()
        att.last_epoch, att.last_step = view.epochs_done or 0, view.step or 0
        self.save()

    def adopt_unrecorded(self, att: Attempt) -> bool:
        """An attempt recorded without a pid: a runner died between recording it and recording
        its worker's pid. Find that worker (if it was spawned) by its ``--run-dir`` and record
        its pid + create time; False when there is none."""
        found = self.sys.find_processes(["--run-dir", att.run_dir])
        if not found:
            return False
        att.pid, att.pid_create_time = found[0]
        self.save()
        return True

    def _carry_fired_faults(self, run_dir: Path) -> None:
        fired: set[str] = set()
        for att in self.night.attempts:
            with contextlib.suppress(OSError, ValueError, TypeError):
                fired |= set(json.loads((Path(att.run_dir) / FAULTS_FIRED_FILE).read_text()))
        if fired:
            atomic_write_text(run_dir / FAULTS_FIRED_FILE, json.dumps(sorted(fired)))

    # -- crash recovery -------------------------------------------------------------------
    def recover(self, att: Attempt) -> None:
        """The last attempt has no ending (its supervisor died): the policy's
        :func:`~orchestrator.policy.recovery.recovery_action` says re-attach, stop (control →
        TERM → KILL), kill (TERM → KILL: a silent worker never reads the control file) or
        close; the attempt is then recorded as its events say it ended."""
        hb = self.rb.heartbeat
        alive = att.pid is not None and self.sys.is_alive(att.pid, att.pid_create_time)
        ours = att.pid is not None and self.sys.owns(att.pid)
        health: dict[str, Any] | None = None
        if alive and not ours:
            health = orphan_health(read_events(Path(att.run_dir) / EVENTS_FILE), self.rb,
                                   self.sys.monotonic(), self.sys.wall(), att.pid_create_time)
        h = Health(**health) if health is not None else None
        action = recovery_action(alive, ours, h, att.index in self._reattached)
        if action == "reattach" and health is not None:
            self._reattached.add(att.index)
            self.reattach(att, health)
            return
        if action in ("stop", "kill") and att.pid is not None:
            if action == "stop":
                write_control(att.run_dir, Control(seq=10**6, epochs=None, stop=True))
            first_wait = 0.0 if action == "kill" else max(hb.slow_phase_timeout_s, 60)
            self.sys.stop_group(att.pid, att.pid_create_time,
                                (first_wait, hb.term_grace_s, hb.term_grace_s + 10.0))
        view = attempt_view(att)
        fatal = view.fatal or {}
        kind, msg = recovered_ending((view.finished or {}).get("reason"),
                                     str(fatal.get("kind", "crash")) if view.fatal else None,
                                     str(fatal.get("message", "")), alive, h)
        evidence: dict[str, Any] = {"reason": "recovered", "was_alive": alive}
        if health is not None:
            evidence["health"] = health
        self.record(Decision(DecisionKind.CONTINUE, "recovered", msg, evidence),
                    att.index, kind="stop")
        self._close_attempt(att, None, kind, msg, view)

    def reattach(self, att: Attempt, health: dict[str, Any]) -> AttemptOutcome:
        """Supervise the live, healthy worker of ``att`` to its end (no restart, same attempt
        index and run dir). Events the previous runner already folded into the state are not
        applied again; the supervisor's view still starts from the first event."""
        assert att.pid is not None
        idx, run_dir = att.index, Path(att.run_dir)
        self.record(Decision(DecisionKind.CONTINUE, "recovered",
                             f"re-attached to the running worker (pid {att.pid}, last progress "
                             f"{health['silent_s']:.0f} s ago in phase {health['phase']}, "
                             f"step {health['step']}) after a supervisor restart",
                             {"reason": "reattached", "pid": att.pid, "health": health}),
                    idx, kind="reattached")
        sup = self._supervisor(att, [], already_folded=len(read_events(run_dir / EVENTS_FILE)))
        sup.attach(att.pid, att.pid_create_time)
        return self._supervise(att, sup)

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> Night:
        """Run the night to its end (or to a stop request). An exception inside the runner
        never leaves the night without an ending: it is recorded as a ``runner_error``
        decision, a worker still running is stopped, and the night is finalised with the
        reason (best checkpoint kept, evaluated where time allows)."""
        try:
            return self._run()
        except Exception as exc:
            return self._runner_failed(exc)

    def _runner_failed(self, exc: Exception) -> Night:
        import traceback

        n = self.night
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        text = f"{type(exc).__name__}: {exc}".strip()
        at = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
        reason = f"the night runner failed: {text}{at}"
        with contextlib.suppress(Exception):
            self.record(Decision(DecisionKind.END_NIGHT, RUNNER_ERROR, reason,
                                 {"error": text, "where": at.strip(" ()")}),
                        n.attempts[-1].index if n.attempts else None, kind=RUNNER_ERROR)
        with contextlib.suppress(Exception):
            last = n.attempts[-1] if n.attempts else None
            if last is not None and last.exit_kind is None:
                self.recover(last)
        try:
            self.finalise(Decision(DecisionKind.END_NIGHT, RUNNER_ERROR, reason, reason=reason))
        except Exception as again:  # the state must still say the night ended, and why
            n.end("failed", f"{reason}; finalising failed too: {type(again).__name__}: {again}")
            if self.state.current_night == self.index:
                self.state.current_night = None
            self.save()
        return n

    def _run(self) -> Night:
        n = self.night
        if n.status in FINISHED_KINDS:
            return n
        n.start()
        self.state.current_night = self.index
        self.save()
        while True:
            last = n.attempts[-1] if n.attempts else None
            if last is not None and last.exit_kind is None:
                if last.pid is None and not self.adopt_unrecorded(last):
                    msg = "never started: the runner stopped between recording and spawning it"
                    self.record(Decision(DecisionKind.CONTINUE, "recovered", msg,
                                         {"reason": "recovered", "was_alive": False}),
                                last.index, kind="stop")
                    self._close_attempt(last, None, "stopped", msg, attempt_view(last))
                    continue
                self.recover(last)
                continue
            if last is None:
                top = newest(lineage(n))
                resume = top.path if top else None
            else:
                d = self._pending_restart(last) or self._decide_after(last)
                if d.kind is DecisionKind.END_NIGHT:
                    self.finalise(d)
                    return n
                resume = d.resume_from
            if self.stop.is_set():
                return n
            self.launch(resume)

    def _rung_problem(self, d: Decision) -> str | None:
        """Why a restart's overrides do not validate against the recipe (None: they do)."""
        if d.kind is not DecisionKind.RESTART or not d.overrides:
            return None
        try:
            load_config(self.night.config,
                        override_args({**self.night.overrides, **d.overrides}))
        except ConfigError as exc:
            lines = [ln.strip() for ln in str(exc).strip().splitlines()]
            return "; ".join(lines[1:] or lines)
        return None

    def _pending_restart(self, last: Attempt) -> Decision | None:
        for rec in reversed(self.night.decisions):
            if rec.evidence.get("after_attempt") == last.index and rec.kind == "restart":
                resume = rec.evidence.get("resume_from")
                return Decision(DecisionKind.RESTART, rec.trigger, rec.action,
                                resume_from=resume if isinstance(resume, str) else None)
        return None

    def _decide_after(self, last: Attempt) -> Decision:
        view = attempt_view(last)
        obs = ended_observation(last, view, _stop_reason(self.night, last.index))
        for _ in range(MAX_RUNG_SKIPS):
            d = decide(obs, self.history(), self.rb, self.sys.wall(), self.deadline)
            problem = self._rung_problem(d)
            if problem is None:
                break
            # The rung cannot apply to this recipe: record it as used and decide again.
            self.record(Decision(DecisionKind.CONTINUE, d.trigger,
                                 f"rung skipped: {d.effect or d.action} does not apply to "
                                 f"this recipe ({problem})",
                                 {"ladder": d.ladder, "rung": d.evidence.get("rung"),
                                  "feature": d.evidence.get("feature"), "error": problem,
                                  "after_attempt": last.index}),
                        last.index, kind=RUNG_SKIPPED)
        if d.kind is DecisionKind.RESTART:
            d = Decision(d.kind, d.trigger, d.action, dict(d.evidence, after_attempt=last.index),
                         resume_from=d.resume_from, overrides=d.overrides, effect=d.effect,
                         fallback=d.fallback, ladder=d.ladder)
        self.record(d, last.index)
        return d

    # -- the end --------------------------------------------------------------------------
    def finalise(self, d: Decision) -> None:
        n = self.night
        refs = lineage(n)
        top = newest(refs)
        n.best_checkpoint = best_of(n, refs) or (top.path if top else None)
        evals = [(ev, att) for att in n.attempts for ev in attempt_view(att).evals
                 if int(ev.get("epoch", 0)) > 0]
        final_ev = max(evals, key=lambda p: float(p[0].get("ts", 0)))[0] if evals else None
        if top is not None and (final_ev is None or int(final_ev["epoch"]) < top.epoch):
            final_ev = self.eval_only(top) or final_ev
        n.final_metrics = metrics_of(final_ev) if final_ev else None
        if n.baseline_metrics is None:  # e.g. epoch 0 ran under a supervisor that died
            zero = [ev for att in n.attempts for ev in attempt_view(att).evals
                    if int(ev.get("epoch", -1)) == 0]
            n.baseline_metrics = metrics_of(zero[0]) if zero else None
        last = n.attempts[-1] if n.attempts else None
        finished_ts = None
        if last is not None:
            fin = attempt_view(last).finished
            finished_ts = float(fin["ts"]) if fin else None
        completed = d.trigger == "completed"
        in_window = completed and finished_ts is not None and finished_ts <= self.deadline
        unrecovered = last is not None and last.exit_kind == "nonfinite"
        verdict = judge(self.rb.success, n.final_metrics, n.baseline_metrics,
                        finished_in_window=in_window,
                        no_unrecovered_nonfinite=not unrecovered and n.final_metrics is not None)
        n.success = Success.model_validate(asdict(verdict))
        actual = finished_ts or time.time()
        projections = [parse_iso(f.projected_finish).timestamp() for f in n.forecasts]
        n.forecast_errors_s = forecast.forecast_errors(projections, actual)
        n.forecast_error_s = n.forecast_errors_s[0] if n.forecast_errors_s else None
        n.end(end_status(completed, verdict.level, n.final_metrics is not None),  # type: ignore[arg-type]
              f"{d.reason} (success level: {verdict.level})")
        if self.state.current_night == self.index:
            self.state.current_night = None
        self.save()

    def eval_only(self, ref: CheckpointRef) -> dict[str, Any] | None:
        """Evaluate a checkpoint that has no eval (the worker died before its final eval)."""
        if self.sys.wall() >= self.deadline or self.stop.is_set():
            return None
        run_dir = self.runs / "final-eval"
        argv = [*self.worker, "--config", str(Path(self.night.config).resolve()),
                "--run-dir", str(run_dir), "--resume", ref.path, "--eval-only"]
        for item in self.worker_sets():
            argv += ["--set", item]

        sup = Supervisor(self.sys, self.rb, run_dir=run_dir, argv=argv, cwd=os.getcwd(),
                         deadline=self.deadline,
                         decide=lambda obs: final_eval_decide(obs, self.rb, self.sys.wall()),
                         stop=self.stop, env=worker_env())
        sup.launch()
        out = sup.run()
        evals = [ev for ev in out.view.evals]
        self.record(Decision(DecisionKind.CONTINUE, "final_eval",
                             f"evaluated {Path(ref.path).name} separately: {out.exit_kind}",
                             {"checkpoint": ref.path}), None, kind="eval_only")
        return evals[-1] if evals else None


def worker_env() -> dict[str, str]:
    """The project root on PYTHONPATH, so ``python -m trainer`` imports from any cwd."""
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(ROOT) + (os.pathsep + old if old else "")}


def run_night(store: StateStore, night_index: int, *, stop: threading.Event | None = None,
              system: System | None = None,
              on_update: Callable[[State], None] | None = None) -> Night:
    """Run (or resume, or finalise) ``state.nights[night_index]``; returns the night record.

    A night that cannot even be set up (its runbook or its config with the recorded overrides
    no longer loads) ends ``failed`` with the reason in the state file, never half-open."""
    try:
        runner = NightRunner(store, night_index, stop or threading.Event(), system or System(),
                             on_update)
    except (ConfigError, RunbookError, ValueError, OSError) as exc:
        state = store.load()
        if not 0 <= night_index < len(state.nights):
            raise
        n = state.nights[night_index]
        if n.status in FINISHED_KINDS:
            return n
        n.end("failed", f"the night could not be set up: {exc}")
        if state.current_night == night_index:
            state.current_night = None
        store.save(state)
        if on_update is not None:
            on_update(state)
        return n
    return runner.run()


# ---------------------------------------------------------------------------------------------
# hjepa-night run
def parse_window(text: str) -> timedelta:
    """'8h', '90m', '300s', '1h30m' → timedelta."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text.strip().lower())
    if not parts or "".join(a + b for a, b in parts) != re.sub(r"\s+", "", text.lower()):
        raise ValueError(f"--window {text!r}: use e.g. 8h, 90m, 300s or 1h30m")
    unit = {"h": 3600, "m": 60, "s": 1}
    return timedelta(seconds=sum(float(a) * unit[b] for a, b in parts))


def new_single_night(config: str, runbook: str, window: timedelta,
                     overrides: dict[str, Any]) -> State:
    start = time.time()
    name = f"{Path(config).stem}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(start))}"
    night = Night(name=name, index=0, config=config, runbook=runbook, overrides=overrides,
                  window_start=now_iso(start), deadline=now_iso(start + window.total_seconds()))
    return State(plan=None, nights=[night])


class NightDisplay:
    """Foreground progress: a rich live panel on a TTY, else one log line per change."""

    def __init__(self, tui: bool) -> None:
        from rich.console import Console

        self.console = Console()
        self.tui = tui
        self._live: Any = None
        self._seen: tuple[int, int, int, int | None] = (0, 0, 0, None)

    def __enter__(self) -> NightDisplay:
        if self.tui:
            from rich.live import Live

            self._live = Live(console=self.console, refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, state: State) -> None:
        n = state.nights[0]
        if self._live is not None:
            self._live.update(self._panel(n))
            return
        seen = (len(n.attempts), len(n.decisions), len(n.fallbacks), n.epochs_done)
        if seen == self._seen:
            return
        if seen[0] > self._seen[0]:
            a = n.attempts[-1]
            self._log(f"attempt {a.index} started (resume: {a.resume_from or 'none'})")
        for d in n.decisions[self._seen[1]:]:
            self._log(f"decision {d.kind} [{d.trigger}]: {d.action}")
        if seen[3] != self._seen[3] and n.epochs_done is not None:
            fc = n.forecasts[-1].projected_finish if n.forecasts else "n/a"
            self._log(f"epoch {n.epochs_done}/{n.epochs_planned}, projected finish {fc}")
        self._seen = seen

    def _log(self, text: str) -> None:
        self.console.print(f"[{time.strftime('%H:%M:%S')}] {text}", highlight=False, markup=False)

    def _panel(self, n: Night) -> Any:
        from rich.table import Table

        t = Table(title=f"night {n.name} — {n.status}", show_header=False)
        a = n.attempts[-1] if n.attempts else None
        fc = n.forecasts[-1].projected_finish if n.forecasts else "N/A"
        rows = [
            ("deadline", n.deadline or "N/A"),
            ("attempt", f"{a.index} (resume {Path(a.resume_from).name if a.resume_from else '-'})"
             if a else "N/A"),
            ("epochs", f"{n.epochs_done or 0}/{n.epochs_planned or '?'}"),
            ("projected finish", fc),
            ("overrides", ", ".join(f"{k}={v}" for k, v in n.overrides.items()) or "-"),
        ]
        rows += [(f"fallback {i + 1}", f"[{f.trigger}] {f.action}")
                 for i, f in enumerate(n.fallbacks[-5:])]
        for key, value in rows:
            t.add_row(key, str(value))
        return t


def observers(display: NightDisplay, args: Any, store: StateStore) -> Callable[[State], None]:
    """What watches each state save of a ``run``: the display, and the ``--notify`` command."""
    if not getattr(args, "notify", None):
        return display.update
    from orchestrator.notify import Notifier, NotifySpec

    notifier = Notifier(NotifySpec(command=args.notify), store.dir)

    def both(state: State) -> None:
        display.update(state)
        notifier(state)

    return both


def cmd_run(args: Any) -> int:
    """``hjepa-night run``: one night in the foreground, then the morning report.

    It takes the daemon's lock on the state dir (``STATE_DIR/daemon.lock``) for its whole life:
    a second ``run`` or a ``start`` on the same state dir is refused, naming the owner, instead
    of two runners overwriting one state file."""
    from orchestrator.daemon import DaemonLock, lock_owner

    state_dir = Path(args.state_dir)
    lock = DaemonLock(state_dir)
    if not lock.acquire():
        owner = lock_owner(state_dir) or {}
        print(f"error: {state_dir} is in use by hjepa-night pid {owner.get('pid') or '?'} "
              f"(since {owner.get('since', '?')}); watch it with `hjepa-night status "
              f"--state-dir {state_dir}`, or use another --state-dir", file=sys.stderr)
        return 2
    try:
        return _run_locked(args)
    finally:
        lock.release()


def _run_locked(args: Any) -> int:
    store = StateStore(args.state_dir)
    try:
        window = parse_window(args.window)
        load_config(args.config, list(args.overrides))
        runbook = args.runbook or str(default_runbook_for(args.config))
        load_runbook(runbook)
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if store.exists():
        old = store.load()
        busy = [x for x in old.nights if x.status in ("pending", "running")]
        if old.plan is not None and busy:
            print(f"error: {store.path} holds plan {old.plan.name!r} mid-way (night "
                  f"{busy[0].name} is {busy[0].status}); finish it with `hjepa-night start "
                  f"--plan {old.plan.name} --state-dir {args.state_dir}` or use another "
                  "--state-dir", file=sys.stderr)
            return 2
    overrides: dict[str, Any] = {}
    from trainer.config import parse_override

    for item in args.overrides:
        path, value = parse_override(item)
        overrides[".".join(path)] = value
    state = new_single_night(args.config, runbook, window, overrides)
    store.save(state)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    display = NightDisplay(tui=not args.no_tui and sys.stdout.isatty())
    try:
        with display:
            night = run_night(store, 0, stop=stop, on_update=observers(display, args, store))
    finally:
        signal.signal(signal.SIGINT, previous)
    if night.status == "running":
        print(f"stopped; the night is resumable (state in {store.path})")
        return 130
    try:
        from orchestrator.report import write_report

        report = write_report(store.dir, night=None)
        print(f"morning report: {report}")
    except Exception as exc:  # the night's result stands even if the report fails
        print(f"warning: report not written: {exc}", file=sys.stderr)
    print(f"night {night.name}: {night.status} — {night.reason}")
    return 0 if night.status in ("succeeded", "partial") else 1
