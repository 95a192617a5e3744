"""Judge a night against its runbook's success criteria. Pure.

``judge(criteria, final, baseline, finished_in_window=..., no_unrecovered_nonfinite=...,
evidence=NightEvidence(...))`` returns a :class:`~orchestrator.policy.types.Verdict` (the state
file records it as its ``Success``): one check per criterion with its value, threshold and the
evidence it read, and the highest level whose checks all pass (``must`` < ``should`` <
``stretch``; ``none`` when a must check fails). A night's level — and so the next night's gate —
comes only from these checks.

A metric that is missing (no final eval, no linear probe, no preflight speed-up record, no
previous night) fails its check with the reason in its evidence (``passed: null`` is never used:
a missing result is not a success). ``relative: true`` compares the gain over the epoch-0
(random encoder) evaluation; without a baseline the check fails.
"""

from __future__ import annotations

from typing import Any, Literal

from orchestrator.core.runbook import Check, SuccessCriteria
from orchestrator.policy.types import CheckResult, MetricsFacts, NightEvidence, Verdict

_OPS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}
Level = Literal["must", "should", "stretch"]


def metric_value(metric: str, m: MetricsFacts | None) -> float | None:
    if m is None:
        return None
    if metric.startswith("knn_"):
        return m.knn.get(metric[4:])
    value: Any = getattr(m, metric, None)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def features_intact(check: Check, ev: NightEvidence) -> tuple[bool, dict[str, Any]]:
    """The listed features (default: every one the night started with) still on at its end."""
    planned_on = [f for f, on in ev.features_planned.items() if on]
    wanted: list[str] = list(check.features) if check.features else planned_on
    state: dict[str, str] = {}
    for f in wanted:
        if not ev.features_planned.get(f, False):
            state[f] = "off in the plan"
        elif not ev.features_final.get(f, False):
            state[f] = "switched off: " + ev.disabled_by.get(f, "by an override")
        else:
            state[f] = "on"
    ok = bool(wanted) and all(v == "on" for v in state.values())
    return ok, {"features": state} if state else {"features": "none enabled"}


def _value(
    check: Check, final: MetricsFacts | None, baseline: MetricsFacts | None, ev: NightEvidence
) -> tuple[float | None, dict[str, Any]]:
    """The number a threshold check compares, and what it was computed from."""
    m = check.metric
    if m == "gain_over_previous_night":
        now, before = metric_value("linear_probe", final), metric_value("linear_probe", ev.previous)
        gain: dict[str, Any] = {
            "linear_probe": now,
            "previous_night": ev.previous_name,
            "previous": before,
        }
        if ev.previous_name is None:
            gain["missing"] = "no previous night"
        return (None if now is None or before is None else now - before), gain
    if m == "speedup_vs_no_flash":
        if ev.speedup_vs_no_flash is None:
            return None, {"missing": "not measured (no preflight flash on/off probe)"}
        return ev.speedup_vs_no_flash, {"source": ev.speedup_source}
    if m == "final_loss":
        return ev.final_loss, {"source": "mean training loss of the last epoch"}
    if m == "night_hours":
        return ev.night_hours, {"source": "window start to the worker's finish"}
    value = metric_value(m, final)
    evidence: dict[str, Any] = {"epoch": getattr(final, "epoch", None)} if final else {}
    if value is not None and check.relative:
        base = metric_value(m, baseline)
        evidence.update(final=value, random_encoder=base)
        value = None if base is None else value - base
    return value, evidence


def _one(
    check: Check,
    level: Level,
    final: MetricsFacts | None,
    baseline: MetricsFacts | None,
    flags: dict[str, bool],
    ev: NightEvidence,
) -> CheckResult:
    if check.metric == "features_intact":
        ok, evidence = features_intact(check, ev)
        return CheckResult(check.name, level, ok, ok, True, evidence)
    if check.metric in flags:
        ok = flags[check.metric]
        return CheckResult(name=check.name, level=level, passed=ok, value=ok, threshold=True)
    value, evidence = _value(check, final, baseline, ev)
    if value is None:
        evidence.setdefault("missing", "not measured")
    passed = value is not None and _OPS[check.op or ">"](value, check.value)
    shown = None if value is None else round(value, 4)
    return CheckResult(check.name, level, passed, shown, check.value, evidence)


def judge(
    criteria: SuccessCriteria,
    final: MetricsFacts | None,
    baseline: MetricsFacts | None,
    *,
    finished_in_window: bool,
    no_unrecovered_nonfinite: bool,
    evidence: NightEvidence | None = None,
) -> Verdict:
    flags = {
        "finished_in_window": finished_in_window,
        "no_unrecovered_nonfinite": no_unrecovered_nonfinite,
    }
    ev = evidence or NightEvidence()
    checks: list[CheckResult] = []
    level = "none"
    climbing = True
    names: tuple[Level, ...] = ("must", "should", "stretch")
    for name in names:
        group = [_one(c, name, final, baseline, flags, ev) for c in getattr(criteria, name)]
        checks += group
        if climbing and all(c.passed for c in group):
            level = name
        else:
            climbing = False
    return Verdict(level=level, checks=tuple(checks))  # type: ignore[arg-type]
