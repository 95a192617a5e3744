"""Judge a night against its runbook's success criteria. Pure.

``judge(criteria, final, baseline, finished_in_window=..., no_unrecovered_nonfinite=...)``
returns a :class:`~orchestrator.policy.types.Verdict` (the state file records it as its
``Success``): one check per criterion with its value and threshold, and the
highest level whose checks all pass (``must`` < ``should`` < ``stretch``; ``none`` when a must
check fails). A metric that is missing (no final eval, no linear probe) fails its check
(``passed: null`` is never used for a metric we could not measure: a missing result is not a
success). ``relative: true`` compares the gain over the epoch-0 (random encoder) evaluation;
without a baseline the check fails.
"""

from __future__ import annotations

from typing import Any, Literal

from orchestrator.core.runbook import Check, SuccessCriteria
from orchestrator.policy.types import CheckResult, MetricsFacts, Verdict

_OPS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def metric_value(metric: str, m: MetricsFacts | None) -> float | None:
    if m is None:
        return None
    if metric.startswith("knn_"):
        return m.knn.get(metric[4:])
    value: Any = getattr(m, metric, None)
    return float(value) if isinstance(value, (int, float)) else None


Level = Literal["must", "should", "stretch"]


def _one(
    check: Check,
    level: Level,
    final: MetricsFacts | None,
    baseline: MetricsFacts | None,
    flags: dict[str, bool],
) -> CheckResult:
    if check.metric in flags:
        ok = flags[check.metric]
        return CheckResult(name=check.name, level=level, passed=ok, value=ok, threshold=True)
    value = metric_value(check.metric, final)
    if value is not None and check.relative:
        base = metric_value(check.metric, baseline)
        value = None if base is None else value - base
    passed = value is not None and _OPS[check.op or ">"](value, check.value)
    shown = None if value is None else round(value, 4)
    return CheckResult(
        name=check.name, level=level, passed=passed, value=shown, threshold=check.value
    )


def judge(
    criteria: SuccessCriteria,
    final: MetricsFacts | None,
    baseline: MetricsFacts | None,
    *,
    finished_in_window: bool,
    no_unrecovered_nonfinite: bool,
) -> Verdict:
    flags = {
        "finished_in_window": finished_in_window,
        "no_unrecovered_nonfinite": no_unrecovered_nonfinite,
    }
    checks: list[CheckResult] = []
    level = "none"
    climbing = True
    names: tuple[Level, ...] = ("must", "should", "stretch")
    for name in names:
        group = [_one(c, name, final, baseline, flags) for c in getattr(criteria, name)]
        checks += group
        if climbing and all(c.passed for c in group):
            level = name
        else:
            climbing = False
    return Verdict(level=level, checks=tuple(checks))  # type: ignore[arg-type]
