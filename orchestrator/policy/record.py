"""What a night's record means: the rules the night runner applies when it reads the state back.

    attempts_without_progress([AttemptOutcome("oom", 100), AttemptOutcome("crash", 100)])  # 1
    warned(night.decisions, MEMORY_WARNING)       # a memory trip was already let pass
    stop_reason(night.decisions, attempt_index)   # "deadline" | "slow" | "daemon" | ... | None

Pure: the inputs are plain values (an attempt's exit kind and the newest step it checkpointed;
the recorded decisions' ``kind``, ``trigger`` and ``evidence``), so the rules are table-tested
without a state file. ``orchestrator.night.history`` gathers the inputs from the state and the
events and builds the :class:`~orchestrator.policy.types.NightHistory` from the answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class RecordedDecision(Protocol):
    """A decision as the state file keeps it (``orchestrator.core.state.DecisionRecord``)."""

    @property
    def kind(self) -> str: ...

    @property
    def trigger(self) -> str: ...

    @property
    def evidence(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class AttemptOutcome:
    """One attempt as the progress rule reads it: how it ended (None: still running) and the
    newest step it wrote a checkpoint at (-1: none)."""

    exit_kind: str | None
    top_step: int = -1


# Exit kinds that are not failures: a finished attempt, and one stopped on purpose (a cut, the
# deadline, the daemon) — neither counts against progress.
NOT_A_FAILURE = (None, "finished")
NOT_COUNTED = ("stopped",)


def attempts_without_progress(attempts: Sequence[AttemptOutcome]) -> int:
    """Trailing failed attempts that wrote no checkpoint past the best step so far (the
    ``limits.max_attempts_without_progress`` count). A failed attempt that went past the best
    resets the count; a stopped one neither resets nor counts; running or finished ones are
    skipped."""
    best, without = -1, 0
    for a in attempts:
        if a.exit_kind in NOT_A_FAILURE:
            continue
        if a.top_step > best:
            best, without = a.top_step, 0
        elif a.exit_kind not in NOT_COUNTED:
            without += 1
    return without


# A warning is a ``continue`` decision for one of these triggers: the policy let a trip pass
# once (its ladder was spent) and does not warn twice.
MEMORY_WARNING = ("memory",)
HEALTH_WARNING = ("collapse", "divergence")


def warned(decisions: Iterable[RecordedDecision], triggers: Sequence[str]) -> bool:
    """Whether a warning for one of ``triggers`` was already recorded this night."""
    return any(d.trigger in triggers and d.kind == "continue" for d in decisions)


# Restarts that first stop a live worker, by trigger: the stop's reason is the trigger.
STOPPING_RESTARTS = ("slow", "memory", "hang", "collapse", "divergence")


def stop_reason(decisions: Iterable[RecordedDecision], attempt_index: int) -> str | None:
    """Why attempt ``attempt_index`` was asked to stop (the newest such decision for it wins):
    ``deadline``; a ``stop`` decision's own reason (``daemon`` when it names none); a stopping
    restart's trigger; None when nothing asked it to stop."""
    reason = None
    for d in decisions:
        if d.evidence.get("attempt") != attempt_index:
            continue
        if d.kind == "stop_for_deadline":
            reason = "deadline"
        elif d.kind == "stop":
            reason = str(d.evidence.get("reason", "daemon"))
        elif d.kind == "restart" and d.trigger in STOPPING_RESTARTS:
            reason = d.trigger
    return reason


def rungs_taken(evidence: Iterable[Mapping[str, Any]]) -> tuple[dict[str, int], tuple[str, ...]]:
    """``(ladder → rungs used, features disabled)`` from the evidence of every fallback taken
    and every rung skipped (a rung counts as used either way: the next trip takes the next)."""
    rungs: dict[str, int] = {}
    disabled: list[str] = []
    for ev in evidence:
        ladder, rung = ev.get("ladder"), ev.get("rung")
        if isinstance(ladder, str) and isinstance(rung, int):
            rungs[ladder] = max(rungs.get(ladder, 0), rung + 1)
        feature = ev.get("feature")
        if ladder == "features" and isinstance(feature, str):
            disabled.append(feature)
    return rungs, tuple(disabled)
