"""Crash recovery of a night: an attempt whose supervisor died.

- :meth:`Recovery.adopt_unrecorded`: an attempt recorded without a pid (the runner died between
  recording it and recording its worker) — find that worker by its ``--run-dir``.
- :meth:`Recovery.recover`: re-attach to a live, healthy worker that is not ours, or stop it
  (control → TERM → KILL, or straight to TERM when it is silent), then record how it ended
  (the policy's :mod:`orchestrator.policy.recovery` decides each step).
- :meth:`Recovery.reattach`: supervise such a worker to its end, same attempt and run dir.

:class:`Recovery` is an object the night runner holds, given the night's attempts
(:class:`~orchestrator.night.attempts.NightBase`): it records, saves and supervises through them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.core.state import (
    Attempt,
)
from orchestrator.night.attempts import NightBase
from orchestrator.night.history import (
    attempt_view,
    orphan_health,
)
from orchestrator.night.supervisor import AttemptOutcome
from orchestrator.policy import (
    Decision,
    DecisionKind,
)
from orchestrator.policy.recovery import (
    Health,
    escalation,
    recovered_ending,
    recovery_action,
)
from trainer.events import EVENTS_FILE, Control, write_control
from trainer.events_read import read_events


class Recovery:
    """The night runner's crash recovery (see the module docstring). Owns which attempts it
    re-attached (never twice); acts through the night's attempts it is given."""

    def __init__(self, night: NightBase) -> None:
        self.sys, self.rb, self.save, self.record = night.sys, night.rb, night.save, night.record
        self.close_attempt, self.supervise = night.close_attempt, night.supervise
        self.supervisor = night.supervisor
        self._reattached: set[int] = set()  # attempts re-attached by this runner (never twice)

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

    def recover(self, att: Attempt) -> None:
        """The last attempt has no ending (its supervisor died): the policy's
        :func:`~orchestrator.policy.recovery.recovery_action` says re-attach, stop (control →
        TERM → KILL), kill (TERM → KILL: a silent worker never reads the control file) or
        close; the attempt is then recorded as its events say it ended."""
        alive = att.pid is not None and self.sys.is_alive(att.pid, att.pid_create_time)
        ours = att.pid is not None and self.sys.owns(att.pid)
        health: dict[str, Any] | None = None
        if alive and not ours:
            health = orphan_health(
                read_events(Path(att.run_dir) / EVENTS_FILE),
                self.rb,
                self.sys.monotonic(),
                self.sys.wall(),
                att.pid_create_time,
            )
        h = Health(**health) if health is not None else None
        action = recovery_action(alive, ours, h, att.index in self._reattached)
        if action == "reattach" and health is not None:
            self._reattached.add(att.index)
            self.reattach(att, health)
            return
        if action in ("stop", "kill") and att.pid is not None:
            if action == "stop":
                write_control(att.run_dir, Control(seq=10**6, epochs=None, stop=True))
            waits = escalation(self.rb, hung=action == "kill").waits
            self.sys.stop_group(att.pid, att.pid_create_time, waits)
        view = attempt_view(att)
        fatal = view.fatal or {}
        kind, msg = recovered_ending(
            (view.finished or {}).get("reason"),
            str(fatal.get("kind", "crash")) if view.fatal else None,
            str(fatal.get("message", "")),
            alive,
            h,
        )
        evidence: dict[str, Any] = {"reason": "recovered", "was_alive": alive}
        if health is not None:
            evidence["health"] = health
        self.record(
            Decision(DecisionKind.CONTINUE, "recovered", msg, evidence), att.index, kind="stop"
        )
        self.close_attempt(att, None, kind, msg, view)

    def reattach(self, att: Attempt, health: dict[str, Any]) -> AttemptOutcome:
        """Supervise the live, healthy worker of ``att`` to its end (no restart, same attempt
        index and run dir). Events the previous runner already folded into the state are not
        applied again; the supervisor's view still starts from the first event."""
        assert att.pid is not None
        idx, run_dir = att.index, Path(att.run_dir)
        self.record(
            Decision(
                DecisionKind.CONTINUE,
                "recovered",
                f"re-attached to the running worker (pid {att.pid}, last progress "
                f"{health['silent_s']:.0f} s ago in phase {health['phase']}, "
                f"step {health['step']}) after a supervisor restart",
                {"reason": "reattached", "pid": att.pid, "health": health},
            ),
            idx,
            kind="reattached",
        )
        sup = self.supervisor(att, [], already_folded=len(read_events(run_dir / EVENTS_FILE)))
        sup.attach(att.pid, att.pid_create_time)
        return self.supervise(att, sup)
