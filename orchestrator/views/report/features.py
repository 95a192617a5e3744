"""The report's "what each feature cost": step time and peak memory with each optional feature
on and off, from the feature probe's row in ``STATE_DIR/preflight.jsonl`` (preflight's, or the
one a night ran at its start, ``orchestrator/night/start_probe.py``), and, where two nights of
the plan ran, the difference between the nights' accuracies.

    lines = feature_costs(facts)          # one night's table ([] when nothing was probed)
    lines = between_nights(all_facts)     # the nights' difference ([] with fewer than two)

The two nights differ in more than their features (recipe, batch, epochs, data, fallbacks), so
their accuracy difference is given as what it is: the two nights' difference, not what any one
feature bought.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.preflight.features import COLUMNS, LABELS, costs_from_record
from orchestrator.preflight.fit import read_fits
from orchestrator.views.fmt import NA
from orchestrator.views.report.facts import NightFacts
from orchestrator.views.report.markdown import md_table


def probe_row(f: NightFacts) -> dict[str, Any] | None:
    """The newest feature-probe row for the night's config (by file name, as the night's
    evidence reads it); this night's own start probe first when there is one."""
    name = Path(f.night.config).name
    rows = [
        r for r in read_fits(f.state_dir)
        if Path(str(r.get("config"))).name == name and "features" in r
    ]  # fmt: skip
    own = [r for r in rows if r.get("night") == f.night.name]
    pick = own or rows
    return pick[-1] if pick else None


def _source(r: dict[str, Any]) -> str:
    where = r.get("source", "preflight")
    at = f"micro-batch {r.get('micro', NA)} × accumulation {r.get('accum', NA)}"
    steps = f", {r['steps']} timed steps per configuration" if r.get("steps") else ""
    took = f", {r['seconds']} s" if r.get("seconds") is not None else ""
    dev = r.get("device")
    on = f" on {dev}" if dev else ""
    if dev == "cpu":
        on += " (peak: the process's resident memory)"
    return f"{where} probe{on} at {at}{steps}{took}, all configurations in one worker process"


def feature_costs(f: NightFacts) -> list[str]:
    r = probe_row(f)
    if r is None:
        return []
    out = ["### What each feature cost", ""]
    costs = costs_from_record(r)
    if costs:
        out += md_table(COLUMNS, [c.cells() for c in costs])
    out.append(
        f"_Measured by the {_source(r)}; speed factor = step time without the feature over "
        "with it (above 1: the feature makes the step faster)._"
    )
    if r.get("error"):
        out.append(f"_The probe did not finish: {r['error']}._")
    return [*out, ""]


def between_nights(facts: list[NightFacts]) -> list[str]:
    """Per feature, on or off in each night and its measured speed factor; then the nights'
    accuracy difference, labelled as such."""
    ran = [f for f in facts if f.night.attempts]
    if len(ran) < 2:
        return []
    first, last = ran[0], ran[-1]
    features: dict[str, list[str]] = {}
    probed = [probe_row(f) for f in ran]
    for i, r in enumerate(probed):
        for c in costs_from_record(r) if r else []:
            cells = features.setdefault(c.feature, [""] * len(ran))
            factor = c.speed_factor
            cells[i] = f"on, {factor:.2f}x" if factor is not None else "on"
    for cells in features.values():
        for i, r in enumerate(probed):
            cells[i] = cells[i] or ("off" if r is not None else "not probed")
    out = ["## Features across the nights", ""]
    if features:
        rows = [[LABELS.get(name, name), *cells] for name, cells in features.items()]
        header = ["feature", *[f"night {f.night.index + 1}: {f.night.name}" for f in ran]]
        out += md_table(header, rows)
    a, b = first.final, last.final
    diffs = []
    if a is not None and b is not None:
        pairs = [("linear probe", a.linear_probe, b.linear_probe)]
        pairs += [(f"kNN k={k}", a.knn.get(k), b.knn.get(k)) for k in ("20", "1")]
        diffs = [
            f"{name} {fmt_points(y - x)}" for name, x, y in pairs if x is not None and y is not None
        ]
    if diffs:
        out.append(
            f"Night {last.night.index + 1} ({last.night.name}) − night {first.night.index + 1} "
            f"({first.night.name}): **{', '.join(diffs)}**. This is the difference between the "
            "two nights as a whole (recipe, features, batch, epochs, data and any fallbacks all "
            "differ), not what any one feature bought."
        )
    else:
        out.append("No accuracy difference between the nights: one of them has no final eval.")
    return [*out, ""]


def fmt_points(delta: float) -> str:
    return f"{100 * delta:+.1f} pts"
