"""The morning report's side-by-side table of the nights that ran (conservative vs aggressive),
and each night's linear probe against the one before it, judged by its own recorded criteria.

lines = side_by_side(facts)   # [] with fewer than two nights that ran
"""

from __future__ import annotations

import itertools

from orchestrator.views.fmt import NA, fmt_dur, fmt_gb, fmt_num, fmt_pct
from orchestrator.views.report.facts import NightFacts
from orchestrator.views.report.markdown import md_table


def tree_peak(f: NightFacts) -> float | None:
    """The worker tree's peak as the host ceiling measured it (PSS/USS; RSS where no other)."""
    peaks = f.run.sample_peaks
    value = peaks.get("tree_mem", peaks.get("tree_rss"))
    return float(value) if value is not None else None


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
        ["peak worker tree memory"] + [fmt_gb(tree_peak(f)) for f in ran],
    ]
    out = ["## Conservative vs aggressive", ""]
    out += md_table(["", *[f"night {f.night.index + 1}: {f.night.name}" for f in ran]], rows)
    return out + gain_lines(ran)


def gain_lines(ran: list[NightFacts]) -> list[str]:
    """Each night's linear probe against the night before it; the verdict is the night's own
    recorded ``gain_over_previous_night`` check(s) (its runbook's criteria), none without one."""
    out = []
    for prev, later in itertools.pairwise(ran):
        lp_p = prev.final.linear_probe if prev.final else None
        lp_l = later.final.linear_probe if later.final else None
        if lp_p is None or lp_l is None:
            continue
        delta = 100 * (lp_l - lp_p)
        verdicts = []
        for c in later.night.success.checks if later.night.success else ():
            spec = later.check_specs.get(c.name)
            if spec is not None and spec.metric == "gain_over_previous_night" and spec.value:
                verb = "meets" if c.passed else "misses"
                verdicts.append(f"{verb} its {c.level} criterion of {100 * spec.value:+.0f} points")
        said = f" ({'; '.join(verdicts)})" if verdicts else ""
        out += [
            f"{later.night.name.capitalize()} − {prev.night.name} linear probe: "
            f"**{delta:+.1f} pts**{said}.",
            "",
        ]
    return out
