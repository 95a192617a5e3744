"""Decisions around the edges of a night: after a supervisor or daemon died, during a separate
final evaluation, and when a night must end. Pure, like the rest of the policy.

- :func:`orphan_health`: is a worker left running by a dead supervisor still making progress?
  (silence against the phase's timeout, :func:`~orchestrator.policy.decide.progress_timeout`)
- :func:`recovery_action`: what to do with the last attempt of a night that has no ending —
  ``reattach`` (alive, not this runner's child, healthy, not re-attached before), ``stop``
  (alive: ask it to checkpoint, then TERM → KILL), ``kill`` (alive but silent: it would never
  read the control file, so straight to SIGTERM), or ``close`` (gone).
- :func:`recovered_ending`: how such an attempt is recorded (finished, its fatal kind, stopped).
- :func:`final_eval_decide`: the separate final evaluation is only ever killed for a hang;
  :func:`needs_final_eval`: whether the ending runs one at all.
- :func:`finished_in_window` / :func:`no_unrecovered_nonfinite`: the ending's two flags the
  success checks read.
- :func:`escalation`: the one stop escalation — how long a graceful stop (control file) may
  take, then SIGTERM's grace, then how long to wait after SIGKILL — used by the supervisor's
  live escalation and by crash recovery; :func:`orphan_escalation`, the daemon's stop of a
  worker whose runner is gone.
- :func:`deadline_grace_s`: how long past its deadline the daemon lets a night runner finish
  before it stops it (5% of the window, at least a minute).
- :func:`unended_reason`: why a night whose runner returned without ending it is closed.
- :func:`end_status`: the status a finished night gets from how it ended and its verdict;
  :func:`passed_window_status`: the status of one whose window passed while nothing ran it.
- :func:`next_night`: the plan's gate once the previous night ended — run the planned night,
  skip it, or repeat the previous recipe with what its fallbacks settled on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.core.runbook import Runbook
from orchestrator.policy.decide import progress_timeout, silence
from orchestrator.policy.types import CONTINUE, Decision, DecisionKind, Observation

RecoveryAction = Literal["reattach", "stop", "kill", "close"]


@dataclass(frozen=True)
class Health:
    healthy: bool
    silent_s: float
    timeout_s: float
    phase: str
    step: int

    def as_json(self) -> dict[str, object]:
        return {
            "healthy": self.healthy,
            "silent_s": round(self.silent_s, 1),
            "timeout_s": round(self.timeout_s, 1),
            "phase": self.phase,
            "step": self.step,
        }


def orphan_health(obs: Observation, rb: Runbook) -> Health:
    """``obs.silent_s``: seconds since the newest progress sign (or since the process started
    when there is none; unknown → infinite). Healthy while within the phase's timeout."""
    silent = obs.silent_s if obs.silent_s is not None else float("inf")
    timeout, phase = progress_timeout(obs, rb)
    return Health(silent <= timeout, silent, timeout, phase, obs.step)


def recovery_action(
    alive: bool, ours: bool, health: Health | None, reattached_before: bool
) -> RecoveryAction:
    if not alive:
        return "close"
    if not ours and health is not None and health.healthy and not reattached_before:
        return "reattach"
    if health is not None and not health.healthy:
        return "kill"
    return "stop"


def recovered_ending(
    finished_reason: str | None,
    fatal_kind: str | None,
    fatal_message: str | None,
    alive: bool,
    health: Health | None,
) -> tuple[str, str]:
    """``(exit_kind, message)`` of an attempt whose supervisor died, from its events."""
    if finished_reason == "completed":
        return "finished", "completed (seen after a supervisor restart)"
    if fatal_kind is not None:
        return fatal_kind, fatal_message or ""
    if health is not None and not health.healthy:
        return "stopped", (
            f"stopped after a supervisor restart: no progress for "
            f"{health.silent_s:.0f} s in phase {health.phase} (limit "
            f"{health.timeout_s:.0f} s)"
        )
    if alive:
        return "stopped", "stopped after a supervisor restart"
    return "stopped", "worker gone after a supervisor restart"


def final_eval_decide(obs: Observation, rb: Runbook, now: float) -> Decision:
    """A separate final evaluation has no ladders and no epochs to cut: only a hang stops it,
    and nothing is launched again (``KILL``, not ``RESTART``)."""
    timeout, _ = progress_timeout(obs, rb)
    if silence(obs, now) > timeout:
        return Decision(DecisionKind.KILL, "hang", "final eval hung: kill it")
    return CONTINUE


def needs_final_eval(final_eval_epoch: int | None, newest_checkpoint_epoch: int | None) -> bool:
    """Whether the night's ending runs a separate evaluation: its newest usable checkpoint is
    past the newest evaluation after epoch 0 (or nothing after epoch 0 was evaluated)."""
    if newest_checkpoint_epoch is None:
        return False
    return final_eval_epoch is None or final_eval_epoch < newest_checkpoint_epoch


def finished_in_window(completed: bool, finished_ts: float | None, deadline: float) -> bool:
    """The ``finished_in_window`` check: the night completed and the worker's ``finished``
    event came by the deadline."""
    return completed and finished_ts is not None and finished_ts <= deadline


def no_unrecovered_nonfinite(last_exit_kind: str | None, evaluated: bool) -> bool:
    """The ``no_unrecovered_nonfinite`` check: an evaluated model, and the night's last attempt
    did not end on a non-finite loss (an earlier one that a rung fixed does not count)."""
    return evaluated and last_exit_kind != "nonfinite"


@dataclass(frozen=True)
class Escalation:
    stop_s: float  # control-file stop → SIGTERM (0: straight to SIGTERM)
    term_s: float  # SIGTERM → SIGKILL
    kill_s: float  # after SIGKILL, how long to wait for the exit

    @property
    def waits(self) -> tuple[float, float, float]:
        return self.stop_s, self.term_s, self.kill_s


KILL_WAIT_S = 10.0  # after SIGKILL, beyond the SIGTERM grace: how long to wait for the exit
ORPHAN_TERM_S = 60.0  # the daemon's SIGTERM → SIGKILL for a worker whose runner is gone


def escalation(rb: Runbook, hung: bool = False) -> Escalation:
    """A worker asked to stop checkpoints first, which may take a slow phase (at least a
    minute); a hung one never reads the control file, so it goes straight to SIGTERM."""
    hb = rb.progress
    stop = 0.0 if hung else max(hb.slow_phase_timeout_s, 60.0)
    return Escalation(stop, hb.term_grace_s, hb.term_grace_s + KILL_WAIT_S)


def orphan_escalation(term_s: float = ORPHAN_TERM_S) -> Escalation:
    """The daemon's stop of a worker whose night runner is gone: nobody reads its progress, so
    straight to SIGTERM (it checkpoints on TERM), SIGKILL after ``term_s``."""
    return Escalation(0.0, term_s, KILL_WAIT_S)


def probe_escalation() -> Escalation:
    """A timing probe cut short: it prints each measurement as it goes and holds nothing to
    checkpoint, so straight to SIGTERM, SIGKILL after 3 s."""
    return Escalation(0.0, 3.0, 5.0)


def deadline_grace_s(window_s: float, override_s: float | None = None) -> float:
    """Seconds after a night's deadline before the daemon stops a runner still busy."""
    if override_s is not None:
        return override_s
    return max(60.0, 0.05 * window_s)


def unended_reason(
    runner_error: str | None, deadline_hit: bool, stop_requested: bool
) -> str | None:
    """Why the daemon closes a night its runner left without an ending (None: leave it
    ``running``, to be resumed — the daemon itself was asked to stop)."""
    if runner_error is not None:
        return f"the night runner crashed: {runner_error}"
    if deadline_hit:
        return "still running past its deadline; stopped by the daemon"
    if stop_requested:
        return None
    return "the night runner returned without ending the night"


def passed_window_status(started: bool, evaluated_checkpoint: bool) -> str:
    """The status of a night whose window passed while nothing ran it: ``skipped`` (never
    started), ``partial`` (started, with an evaluated checkpoint), else ``failed``."""
    if not started:
        return "skipped"
    return "partial" if evaluated_checkpoint else "failed"


def end_status(
    completed: bool, success_level: str, evaluated: bool, trained_epochs: int | None = None
) -> str:
    """``succeeded`` (trained to the end and met at least ``must``), ``partial`` (an evaluated
    model with at least one epoch trained, but not that), else ``failed`` — a night that never
    finished an epoch has nothing to show but the random encoder."""
    if completed and success_level != "none":
        return "succeeded"
    if trained_epochs is not None and trained_epochs < 1:
        return "failed"
    return "partial" if evaluated else "failed"


def next_night(requires: str, otherwise: str, previous_status: str | None) -> str:
    """``run`` (``requires: none``, or the previous night succeeded), else ``skip`` or
    ``repeat`` as the plan's ``otherwise`` says (``skip`` when there is no previous night)."""
    if requires == "none" or previous_status == "succeeded":
        return "run"
    if otherwise == "skip" or previous_status is None:
        return "skip"
    return "repeat"


def learned_overrides(overrides: dict[str, object]) -> dict[str, object]:
    """What a repeated night keeps of the previous one's final overrides: everything its
    fallbacks settled on, never an injected fault."""
    return {k: v for k, v in overrides.items() if not k.startswith("faults.")}
