"""The night runner's base: one night's moving parts, how a decision is recorded, and how one
attempt is launched and supervised.

:class:`NightBase` holds the state store, the night, its runbook and deadline, and the system
seam; :meth:`~NightBase.record` writes a decision (and the config keys it changes) into the state
file *before* anything acts on it; :meth:`~NightBase.launch` records an attempt, then spawns its
worker under a :class:`~orchestrator.night.supervisor.Supervisor` wired to the policy, folding
its events into the night (device, metrics, best checkpoint, epochs, forecasts). The crash
recovery (:mod:`orchestrator.night.recovery`) and the ending (:mod:`orchestrator.night.ending`)
are objects given it; the main loop (:mod:`orchestrator.night.runner`) builds on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.core.datafiles import PROJECT_ROOT
from orchestrator.core.fold import RunView
from orchestrator.core.launcher import rdzv_id, worker_command
from orchestrator.core.runbook import (
    Runbook,
    load_runbook,
)
from orchestrator.core.state import (
    ENDED,
    Attempt,
    ClockGap,
    DecisionRecord,
    Fallback,
    ForecastRecord,
    Night,
    State,
    StateStore,
    now_iso,
    parse_iso,
)
from orchestrator.core.system import System
from orchestrator.night.history import (
    build_history,
    override_args,
    record_results,
    results_of,
)
from orchestrator.night.supervisor import AttemptOutcome, Supervisor
from orchestrator.policy import (
    Decision,
    DecisionKind,
    NightHistory,
    decide,
    forecast,
)
from orchestrator.policy.clock import ClockWatch
from trainer.config import Config, load_config
from trainer.events import (
    FAULTS_FIRED_FILE,
    atomic_write_text,
)

FINISHED_KINDS = ENDED  # the statuses a night ends in (core.state.TRANSITIONS)
RUNNER_ERROR = "runner_error"  # an exception inside the night runner itself
MAX_RUNG_SKIPS = 20


class NightBase:
    """One night's moving parts (see the module docstring)."""

    def __init__(
        self,
        store: StateStore,
        index: int,
        stop: threading.Event,
        system: System,
        on_update: Callable[[State], None] | None,
        worker: list[str] | None = None,
    ) -> None:
        self.store, self.index, self.stop, self.sys = store, index, stop, system
        self.worker = worker  # the worker command; None: from the config (core/launcher.py)
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

    def worker_command(self, alone: bool = False) -> list[str]:
        """The worker's argv up to ``--config``: as given, else from the night's config (the
        launcher when ``distributed`` asks for several processes, unless ``alone``)."""
        if self.worker is not None:
            return list(self.worker)
        if alone:
            return [sys.executable, "-m", "trainer"]
        cfg = self.cfg()
        return worker_command(cfg.distributed, run_id=rdzv_id(cfg))

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
        n.decisions.append(
            DecisionRecord(
                kind=kind or d.kind.value, trigger=d.trigger, action=d.action, at=at, evidence=ev
            )
        )
        if d.fallback:
            n.fallbacks.append(
                Fallback(
                    trigger=d.trigger,
                    action=d.action,
                    at=at,
                    evidence=ev,
                    effect=d.effect,
                    attempt=attempt,
                )
            )
        self.save()

    def on_event(self, ev: dict[str, Any], view: Callable[[], RunView]) -> None:
        n, kind = self.night, ev.get("type")
        if kind == "started":
            n.device = str(ev.get("device"))
            n.epochs_planned = int(ev.get("epochs", 0)) or n.epochs_planned
        elif kind in ("eval", "best"):
            record_results(n, results_of(n))
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
        end = forecast.finish(
            v.epoch_seconds,
            v.eval_seconds,
            v.checkpoint_seconds,
            v.epoch_end_ts,
            v.epochs_done or 0,
            v.total_epochs or 0,
            self.rb.final_eval_s,
        )
        if end is None:
            return
        self.night.forecasts.append(
            ForecastRecord(
                at=now_iso(),
                epoch=v.epochs_done or 0,
                projected_finish=now_iso(end),
                deadline=self.night.deadline,
            )
        )

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
        argv = [
            *self.worker_command(),
            "--config",
            str(Path(n.config).resolve()),
            "--run-dir",
            str(run_dir),
        ]
        if resume_from:
            argv += ["--resume", resume_from]
        for item in self.worker_sets():
            argv += ["--set", item]
        att = Attempt(
            index=idx,
            run_dir=str(run_dir),
            overrides=dict(n.overrides),
            resume_from=resume_from,
            started_at=now_iso(),
        )
        n.attempts.append(att)
        self.save()  # recorded before the spawn
        run_dir.mkdir(parents=True, exist_ok=True)
        self._carry_fired_faults(run_dir)
        sup = self.supervisor(att, argv)
        att.pid = sup.launch()
        att.pid_create_time = self.sys.create_time(att.pid)
        self.save()
        return self.supervise(att, sup)

    def _decide_now(
        self, watch: ClockWatch, att: Attempt, obs: Any, history: NightHistory
    ) -> Decision:
        """The policy's live decision, after recording any sleep of the machine (the wall
        clock ran ahead of the monotonic one) in the night's ``clock_gaps``: hangs are timed
        on the monotonic clock and never see a sleep; the deadline is the wall clock's."""
        gap = watch.read(self.sys.monotonic(), self.sys.wall())
        if gap is not None:
            self.night.clock_gaps.append(
                ClockGap(at=now_iso(self.sys.wall()), seconds=round(gap, 1), attempt=att.index)
            )
            self.save()
        return decide(obs, history, self.rb, self.sys.wall(), self.deadline)

    def supervisor(self, att: Attempt, argv: list[str], already_folded: int = 0) -> Supervisor:
        """A Supervisor for ``att`` wired to this night: the policy with the night's history,
        its events folded into the state (all but the first ``already_folded``, which a
        previous runner recorded), its decisions recorded before they act."""
        history = [self.history()]
        watch = ClockWatch()
        sup = Supervisor(
            self.sys,
            self.rb,
            run_dir=Path(att.run_dir),
            argv=argv,
            cwd=os.getcwd(),
            deadline=self.deadline,
            decide=lambda obs: self._decide_now(watch, att, obs, history[0]),
            stop=self.stop,
            env=worker_env(),
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

    def supervise(self, att: Attempt, sup: Supervisor) -> AttemptOutcome:
        out = sup.run()
        if out.stop_reason == "daemon":
            self.record(
                Decision(
                    DecisionKind.CONTINUE,
                    "daemon",
                    "stopped on request (daemon)",
                    {"reason": "daemon"},
                ),
                att.index,
                kind="stop",
            )
        self.close_attempt(att, out.exit_code, out.exit_kind, out.message, out.view)
        return out

    def close_attempt(
        self, att: Attempt, code: int | None, kind: str, message: str, view: RunView
    ) -> None:
        att.exit_code, att.exit_kind, att.message = code, kind, message  # type: ignore[assignment]
        att.ended_at = now_iso()
        att.last_epoch, att.last_step = view.epochs_done or 0, view.step or 0
        self.save()

    def _carry_fired_faults(self, run_dir: Path) -> None:
        fired: set[str] = set()
        for att in self.night.attempts:
            with contextlib.suppress(OSError, ValueError, TypeError):
                fired |= set(json.loads((Path(att.run_dir) / FAULTS_FIRED_FILE).read_text()))
        if fired:
            atomic_write_text(run_dir / FAULTS_FIRED_FILE, json.dumps(sorted(fired)))


def worker_env() -> dict[str, str]:
    """The project root on PYTHONPATH, so ``python -m trainer`` imports from any cwd."""
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(PROJECT_ROOT) + (os.pathsep + old if old else "")}
