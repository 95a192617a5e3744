"""The night runner: one night from its spec in the state file to a judged, evaluated model.

    hjepa-night run --config configs/demo_conservative.yaml --window 10m --state-dir var
    run_night(StateStore("var"), 0, stop=threading.Event())          # what the daemon calls

``run_night`` reads ``state.nights[night_index]`` (config, runbook, base overrides, window,
deadline), then loops: launch an attempt (``STATE_DIR/runs/<night>/attempt-NN/``) under a
:class:`~orchestrator.night.supervisor.Supervisor`, let the pure policy decide live (epoch cuts,
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
- ``stop`` set: the worker checkpoints and exits; the attempt and the night are ``stopped``
  and the next ``run_night`` resumes it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.core.awake import SleepGuard
from orchestrator.core.runbook import (
    RunbookError,
)
from orchestrator.core.state import (
    Attempt,
    Night,
    State,
    StateStore,
)
from orchestrator.core.system import System
from orchestrator.night.attempts import FINISHED_KINDS, MAX_RUNG_SKIPS, RUNNER_ERROR, NightBase
from orchestrator.night.disk import free_old_checkpoints
from orchestrator.night.ending import Ending
from orchestrator.night.history import (
    RUNG_SKIPPED,
    attempt_view,
    ended_observation,
    lineage,
    newest,
    override_args,
    stop_reason_of,
)
from orchestrator.night.recovery import Recovery
from orchestrator.night.start_probe import probe_at_start
from orchestrator.policy import (
    Decision,
    DecisionKind,
    decide,
)
from orchestrator.policy.decide import DISK_KEEP
from trainer.config import ConfigError, load_config


# ---------------------------------------------------------------------------------------------
class NightRunner(NightBase):
    """One night from its spec in the state file to its ending; :func:`run_night` is the
    public entry (see the module docstring). Holds its crash ``recovery`` and its ``ending``,
    each given the night's attempts (this object)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recovery = Recovery(self)
        self.ending = Ending(self)

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
            self.record(
                Decision(
                    DecisionKind.END_NIGHT,
                    RUNNER_ERROR,
                    reason,
                    {"error": text, "where": at.strip(" ()")},
                ),
                n.attempts[-1].index if n.attempts else None,
                kind=RUNNER_ERROR,
            )
        with contextlib.suppress(Exception):
            last = n.attempts[-1] if n.attempts else None
            if last is not None and last.exit_kind is None:
                self.recovery.recover(last)
        try:
            end = Decision(DecisionKind.END_NIGHT, RUNNER_ERROR, reason, reason=reason)
            self.ending.finalise(end)
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
        probe_at_start(self)  # the feature costs, when preflight never measured this config
        while True:
            last = n.attempts[-1] if n.attempts else None
            if last is not None and last.exit_kind is None:
                if last.pid is None and not self.recovery.adopt_unrecorded(last):
                    msg = "never started: the runner stopped between recording and spawning it"
                    self.record(
                        Decision(
                            DecisionKind.CONTINUE,
                            "recovered",
                            msg,
                            {"reason": "recovered", "was_alive": False},
                        ),
                        last.index,
                        kind="stop",
                    )
                    self.close_attempt(last, None, "stopped", msg, attempt_view(last))
                    continue
                self.recovery.recover(last)
                continue
            if last is None:
                top = newest(lineage(n))
                resume = top.path if top else None
            else:
                if self.stop.is_set() and last.exit_kind != "finished":
                    return self._stopped()  # the next run decides (no restart after a stop)
                d = self._pending_restart(last) or self._decide_after(last)
                if d.kind is DecisionKind.END_NIGHT:
                    self.ending.finalise(d)
                    return n
                resume = d.resume_from
                if d.trigger == "disk":
                    self._free_disk(last, resume)
            if self.stop.is_set():
                return self._stopped()
            self.launch(resume)

    def _stopped(self) -> Night:
        """A stop request ends the night here, resumable: stored as ``stopped``."""
        self.night.pause("stopped on request; resumable")
        if self.state.current_night == self.index:
            self.state.current_night = None
        self.save()
        return self.night

    def _free_disk(self, last: Attempt, resume: str | None) -> None:
        """The disk rung: free old checkpoints before the retry, and record what it freed."""
        if any(r.kind == "freed" and r.evidence.get("after_attempt") == last.index
               for r in self.night.decisions):  # fmt: skip
            return
        freed = free_old_checkpoints(self.night, DISK_KEEP, resume)
        self.record(
            Decision(
                DecisionKind.CONTINUE,
                "disk",
                freed.sentence(),
                {
                    "files": freed.files,
                    "bytes": freed.bytes,
                    "free_mb": round(freed.free_mb, 1),
                    "after_attempt": last.index,
                },
            ),
            last.index,
            kind="freed",
        )

    def _rung_problem(self, d: Decision) -> str | None:
        """Why a restart's overrides do not validate against the recipe (None: they do)."""
        if d.kind is not DecisionKind.RESTART or not d.overrides:
            return None
        try:
            load_config(self.night.config, override_args({**self.night.overrides, **d.overrides}))
        except ConfigError as exc:
            lines = [ln.strip() for ln in str(exc).strip().splitlines()]
            return "; ".join(lines[1:] or lines)
        return None

    def _pending_restart(self, last: Attempt) -> Decision | None:
        for rec in reversed(self.night.decisions):
            if rec.evidence.get("after_attempt") == last.index and rec.kind == "restart":
                resume = rec.evidence.get("resume_from")
                return Decision(
                    DecisionKind.RESTART,
                    rec.trigger,
                    rec.action,
                    resume_from=resume if isinstance(resume, str) else None,
                )
        return None

    def _decide_after(self, last: Attempt) -> Decision:
        view = attempt_view(last)
        obs = ended_observation(last, view, stop_reason_of(self.night, last.index))
        for _ in range(MAX_RUNG_SKIPS):
            d = decide(obs, self.history(), self.rb, self.sys.wall(), self.deadline)
            problem = self._rung_problem(d)
            if problem is None:
                break
            # The rung cannot apply to this recipe: record it as used and decide again.
            self.record(
                Decision(
                    DecisionKind.CONTINUE,
                    d.trigger,
                    f"rung skipped: {d.effect or d.action} does not apply to "
                    f"this recipe ({problem})",
                    {
                        "ladder": d.ladder,
                        "rung": d.evidence.get("rung"),
                        "feature": d.evidence.get("feature"),
                        "error": problem,
                        "after_attempt": last.index,
                    },
                ),
                last.index,
                kind=RUNG_SKIPPED,
            )
        if d.kind is DecisionKind.RESTART:
            d = Decision(
                d.kind,
                d.trigger,
                d.action,
                dict(d.evidence, after_attempt=last.index),
                resume_from=d.resume_from,
                overrides=d.overrides,
                effect=d.effect,
                fallback=d.fallback,
                ladder=d.ladder,
            )
        self.record(d, last.index)
        return d


def run_night(
    store: StateStore,
    night_index: int,
    *,
    stop: threading.Event | None = None,
    system: System | None = None,
    on_update: Callable[[State], None] | None = None,
) -> Night:
    """Run (or resume, or finalise) ``state.nights[night_index]``; returns the night record.

    A night that cannot even be set up (its runbook or its config with the recorded overrides
    no longer loads) ends ``failed`` with the reason in the state file, never half-open. While
    it runs, a sleep assertion is held (``orchestrator/core/awake.py``; ``night.awake`` says by
    what, or why not) and released when it returns."""
    try:
        runner = NightRunner(
            store, night_index, stop or threading.Event(), system or System(), on_update
        )
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
    if runner.night.status in FINISHED_KINDS:
        return runner.run()
    with SleepGuard() as guard:  # no idle or system sleep from the night's start to its end
        runner.night.awake = guard.hold()
        return runner.run()
