"""The morning report's side-by-side table of the nights that ran (conservative vs aggressive).

lines = side_by_side(facts)   # [] with fewer than two nights that ran
"""

from __future__ import annotations

from orchestrator.views.fmt import NA, fmt_dur, fmt_gb, fmt_num, fmt_pct
from orchestrator.views.report.facts import NightFacts
from orchestrator.views.report.markdown import md_table


def side_by_side(facts: list[NightFacts]) -> list[str]:
    ran = [f for f in facts if f.night.attempts]
    if len(ran) < 2:
        return []

    def lp(f: NightFacts) -> float | None:
        return f.final.linear_probe if f.final else None

    rows = [
        ["status / level"]
        + [f"{f.night.status} / {f.night.success.level if f.night.success else NA}" for f in ran],
        ["linear probe"] + [fmt_pct(lp(f)) for f in ran],
        ["gain over random init"] + [fmt_pct(f.probe_gain()) for f in ran],
        *[
            [f"kNN k={k}"] + [fmt_pct(f.final.knn.get(k) if f.final else None) for f in ran]
            for k in ("1", "5", "20")
        ],
        ["feature std"] + [fmt_num(f.final.feature_std if f.final else None) for f in ran],
        ["effective rank"] + [fmt_num(f.final.effective_rank if f.final else None) for f in ran],
        ["epochs done"] + [str(f.night.epochs_done) for f in ran],
        ["time used"] + [fmt_dur(f.used_s) for f in ran],
        ["attempts / fallbacks"]
        + [f"{len(f.night.attempts)} / {len(f.night.fallbacks)}" for f in ran],
        ["median img/s"] + [fmt_num(f.median_img_s(), ".1f") for f in ran],
        ["peak worker memory"] + [fmt_gb(f.run.sample_peaks.get("tree_rss")) for f in ran],
    ]
    out = ["## Conservative vs aggressive", ""]
    out += md_table(["", *[f"night {f.night.index + 1}: {f.night.name}" for f in ran]], rows)
    cons = next((f for f in ran if "conservative" in f.night.name + f.night.config), None)
    aggr = next((f for f in ran if "aggressive" in f.night.name + f.night.config), None)
    if cons and aggr and lp(cons) is not None and lp(aggr) is not None:
        delta = 100 * (lp(aggr) - lp(cons))  # type: ignore[operator]
        verdict = "meets" if delta >= 5 else "misses"
        out += [
            f"Aggressive − conservative linear probe: **{delta:+.1f} pts** ({verdict} the "
            "+5 points the aggressive night should add).",
            "",
        ]
    return out
