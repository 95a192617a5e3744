"""The morning report as a file: ``hjepa-night report [--state-dir var] [--night N] [--out FILE]``.

    path = write_report(Path("var"))            # var/reports/morning-<date>.md + PNGs beside it
    path = write_report(Path("var"), night=2)   # var/reports/morning-<date>-night2.md

Called by the daemon when each night ends and at the plan's report time, and on demand. It reads
only the state file and the attempts' ``events.jsonl``/``samples.jsonl`` (works while a night
runs, after it ended, and after a crash). ``<date>`` is the local date of the latest start/end
among the nights reported (the morning after), else today. Plots are written beside the report
as ``<report stem>-n<N>-{loss,knn,memory,epochs}.png`` and linked by relative paths, so the
folder can be copied anywhere. The file is replaced atomically.

First screen: one verdict line per night against its success checks, then the next step
(``advice``). Then per night the sections (``sections``): what ran, the attempts, the timeline
and every fallback, time against the window and the forecast error, throughput and peak memory,
the recipe's expectations beside what was measured, the success criteria with the evidence each
read, final metrics with the gain over the random-initialised encoder, the next step, the best
checkpoint with the exact commands to resume or evaluate it, the plots, and the pictures of the
best checkpoint (``pictures``: attention, FPN feature norms, masks); then both nights
side by side when two ran, and the notifications sent. A failed night says what broke, what was
tried and what to do.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from orchestrator.core.state import Night, State, StateError, StateStore, read_snapshot
from orchestrator.schedule.notify import report_lines as notify_report_lines
from orchestrator.views.fmt import fmt_clock
from orchestrator.views.report.advice import next_step, verdict_line
from orchestrator.views.report.compare import side_by_side
from orchestrator.views.report.criteria import criteria_table
from orchestrator.views.report.expected import expected_table
from orchestrator.views.report.facts import NightFacts
from orchestrator.views.report.features import between_nights, feature_costs
from orchestrator.views.report.pictures import picture_links
from orchestrator.views.report.sections import (
    commands,
    fitted,
    metrics_table,
    plot_links,
    time_and_resources,
    timeline,
    what_ran,
)
from orchestrator.views.snapshot import iso_ts
from trainer.events import atomic_write_text


class ReportError(RuntimeError):
    """Nothing to report on (no state file, or no such night)."""


def report_text(state_dir: Path, state: State, nights: list[Night], out: Path) -> str:
    """The report's Markdown; writes the plots beside ``out`` as a side effect."""
    facts = [NightFacts(state_dir, state, n) for n in nights]
    stamp = out.stem.removeprefix("morning-")
    plan = f"plan **{state.plan.name}**" if state.plan else "a single night (`hjepa-night run`)"
    lines = [
        f"# Morning report — {stamp}",
        "",
        f"_{plan}; state `{state_dir}`; written {fmt_clock(time.time(), True)}._",
        "",
        "## Verdict",
        "",
    ]
    lines += [f"- {verdict_line(f)}" for f in facts]
    lines += ["", f"**Next:** {next_step(facts[-1])}" if facts else "", ""]
    for f in facts:
        n = f.night
        lines += [
            f"## Night {n.index + 1} — {n.name} ({n.status})",
            "",
            f"**Next step.** {next_step(f)}",
            "",
            "### What ran",
            "",
        ]
        lines += what_ran(f)
        lines += ["### Success criteria and their evidence", "", *criteria_table(f)]
        lines += ["### Timeline", "", *timeline(f)]
        lines += ["### Time, throughput and memory", "", *time_and_resources(f)]
        lines += fitted(f)
        lines += expected_table(f)
        lines += feature_costs(f)
        lines += ["### Final metrics vs the random-initialised encoder", "", *metrics_table(f)]
        lines += ["### Checkpoint and commands", "", *commands(f, stamp)]
        lines += ["### Plots", "", *plot_links(f, out)]
        lines += ["### Pictures of the best checkpoint", "", *picture_links(f, out)]
    lines += side_by_side(facts)
    lines += between_nights(facts)
    lines += notify_report_lines(state_dir)
    return "\n".join(lines).rstrip() + "\n"


def _morning_date(nights: list[Night]) -> str:
    times = [t for n in nights for t in (iso_ts(n.ended_at), iso_ts(n.started_at)) if t]
    return datetime.fromtimestamp(max(times) if times else time.time()).strftime("%Y-%m-%d")


def write_report(state_dir: Path, night: int | None = None, out: Path | None = None) -> Path:
    """Write the morning report (all nights, or only night ``night``, 1-based) and its plots;
    return the report's path. Raises :class:`ReportError` when there is nothing to report."""
    state_dir = Path(state_dir)
    state = read_snapshot(state_dir)
    if state is None:
        store = StateStore(state_dir)
        if store.path.is_file():
            try:  # the precise reason (corrupt, newer schema), nothing moved aside
                store.load(set_aside=False)
            except StateError as exc:
                raise ReportError(str(exc)) from None
        raise ReportError(f"{state_dir / 'state.json'}: no readable state file")
    nights = [n for n in state.nights if n.status != "pending" or n.attempts]
    if night is not None:
        if not 1 <= night <= len(state.nights):
            raise ReportError(f"no night {night}: the plan has {len(state.nights)} night(s)")
        nights = [state.nights[night - 1]]
    if not nights:
        raise ReportError("no night has started yet: nothing to report")
    suffix = f"-night{night}" if night is not None else ""
    name = f"morning-{_morning_date(nights)}{suffix}.md"
    out = state_dir / "reports" / name if out is None else Path(out)
    if out.is_dir():  # --out DIR: the report (and its plots) inside it
        out = out / name
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, report_text(state_dir, state, nights, out))
    except OSError as exc:
        where = exc.filename or out
        raise ReportError(
            f"cannot write the report to {out} ({exc.strerror or exc}: {where}); "
            "give --out a writable file"
        ) from None
    return out


def cmd_report(args: argparse.Namespace) -> int:
    """``hjepa-night report``: print the report's path and its verdict lines; 1 on no state."""
    try:
        path = write_report(
            Path(args.state_dir), night=args.night, out=Path(args.out) if args.out else None
        )
    except ReportError as exc:
        print(f"hjepa-night report: {exc}", file=sys.stderr)
        return 1
    print(f"report written: {path}")
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("- ") and "**Night" in line:
            print(line)
    return 0
