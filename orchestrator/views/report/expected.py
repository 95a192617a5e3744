"""The report's "expected vs measured": each of the runbook's ``expectations`` (the recipe's
normal epoch time, memory peak, final loss, kNN and probe by the end of the night) beside what
the night measured, and whether it is inside the range.

    expected_table(facts)   # "| epoch time (min) | 9 – 10 | 9.6 | inside |"
"""

from __future__ import annotations

from orchestrator.core.fold import num
from orchestrator.core.runbook import Expectation, RunbookError, load_runbook
from orchestrator.core.units import GB
from orchestrator.views.fmt import NA
from orchestrator.views.report.facts import NightFacts
from orchestrator.views.report.markdown import md_table
from orchestrator.views.snapshot import memory_peak, resolve_path

LABEL = {
    "epoch_minutes": "epoch time (min)",
    "memory_peak_gb": "memory peak (GB)",
    "final_loss": "final training loss",
    "knn_1": "kNN k=1",
    "knn_5": "kNN k=5",
    "knn_20": "kNN k=20",
    "linear_probe": "linear probe",
}
FRACTIONS = ("knn_1", "knn_5", "knn_20", "linear_probe")


def measured(f: NightFacts, measure: str) -> float | None:
    """The night's value of one expectation's measure (None: not recorded)."""
    run = f.run
    if measure == "epoch_minutes":
        s = run.recent_epoch_seconds()
        return None if s is None else s / 60
    if measure == "memory_peak_gb":
        peak = memory_peak(run)
        return None if peak is None else peak / GB
    if measure == "final_loss":
        losses = [float(e["mean_loss"]) for e in run.epochs if num(e.get("mean_loss")) is not None]
        return losses[-1] if losses else None
    if f.final is None:
        return None
    if measure.startswith("knn_"):
        return f.final.knn.get(measure[4:])
    return f.final.linear_probe


def _fmt(measure: str, v: float | None) -> str:
    if v is None:
        return NA
    return f"{100 * v:.1f}%" if measure in FRACTIONS else f"{v:.3g}"


def verdict(e: Expectation, value: float | None) -> str:
    if value is None:
        return "not measured"
    if e.low is not None and value < e.low:
        return "BELOW"
    if e.high is not None and value > e.high:
        return "ABOVE"
    return "inside"


def expected_table(f: NightFacts) -> list[str]:
    path = resolve_path(f.state_dir, f.night.runbook)
    if path is None:
        return []
    try:
        rb = load_runbook(path)
    except RunbookError as exc:
        return [f"Runbook unreadable: {str(exc).splitlines()[0]}", ""]
    if not rb.expectations:
        return []
    rows = []
    for e in rb.expectations:
        value = measured(f, e.measure)
        lo, hi = _fmt(e.measure, e.low), _fmt(e.measure, e.high)
        rng = (
            f"{lo} – {hi}"
            if e.low is not None and e.high is not None
            else (f"≥ {lo}" if e.low is not None else f"≤ {hi}")
        )
        rows.append([LABEL[e.measure], rng, _fmt(e.measure, value), verdict(e, value), e.source])
    return [
        "### Expected (the recipe) vs measured",
        "",
        *md_table(["", "expected", "measured", "", "source"], rows),
    ]
