"""The full layout of the status screen: one panel each for the plan and its nights, the
shown night's progress and forecast, the loss, memory, the last evaluation and the fallbacks.

    console.print(render_full(SnapshotSource(Path("var")).take()))

Every panel draws from one immutable :class:`~orchestrator.views.snapshot.Snapshot`; a missing
reading renders as "N/A". Colours (``levels``): worker tree memory against
``memory.good_gb``/``warning_gb`` (critical at or above ``warning_gb``; "over ceiling" at the
host ceiling ``ceiling_gb``); device memory against the device ceiling
(``memory.device_fraction`` of the device's total: warning from 80% of it, critical from 90%;
"(whole-card usage)" when NVML could not tell the worker's share), or on a CPU against the host
bands; the "ceiling" row names both ceilings; epoch minutes and the memory peak against the
recipe's expected range where the runbook's ``expectations`` give one (``levels.level_in_range``:
inside green, above it yellow then red, below it yellow), else epoch minutes against
``display.epoch_minutes``; grad norm against ``display.*`` (higher is worse); feature variance
against ``display.feature_variance`` (lower is worse; the recipe's thresholds are on the
variance, not the std); swap growth since the attempt's first sample against
``memory.swap_growth_gb`` (warning from half of it); system available memory is this screen's
own rule: warning under 5 GB, critical under 2 GB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.core.fold import mem_value, metrics_of
from orchestrator.views.fmt import (
    NA,
    batch_text,
    fmt_clock,
    fmt_dur,
    fmt_gb,
    fmt_num,
    fmt_pct,
    slept_text,
)
from orchestrator.views.screen.levels import (
    NIGHT_STYLE,
    epoch_cell,
    expected_cell,
    level_high_bad,
    level_low_bad,
    styled,
)
from orchestrator.views.snapshot import (
    GB,
    Snapshot,
    device_total,
    iso_ts,
    memory_peak,
)

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """Unicode block sparkline of the last values, bucket-averaged down to ``width`` cells."""
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return NA
    if len(vals) > width:
        size = len(vals) / width
        vals = [
            sum(chunk) / len(chunk)
            for i in range(width)
            if (chunk := vals[int(i * size) : max(int((i + 1) * size), int(i * size) + 1)])
        ]
    lo, hi = min(vals), max(vals)
    if hi - lo <= 1e-12:
        return BLOCKS[3] * len(vals)
    return "".join(BLOCKS[min(7, int((v - lo) / (hi - lo) * 8))] for v in vals)


def _kv(rows: list[tuple[str, RenderableType | str]]) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def _header(s: Snapshot) -> RenderableType:
    st = s.state
    plan = f"{st.plan.name} ({st.plan.kind})" if st and st.plan else "single night (run)"
    daemon = Text(NA)
    if st is not None and st.daemon is not None:
        daemon = (
            Text(f"running (pid {st.daemon.pid})", style="green")
            if s.daemon_alive
            else Text(f"not running (last pid {st.daemon.pid})", style="yellow")
        )
    elif st is not None:
        daemon = Text("none recorded")
    updated = iso_ts(st.updated_at) if st else None
    line = Text.assemble(
        ("plan ", "bold"),
        plan,
        ("   daemon ", "bold"),
        daemon,
        ("   state ", "bold"),
        str(s.state_dir),
        ("   updated ", "bold"),
        f"{fmt_dur(s.taken_at - updated)} ago" if updated else NA,
        (" (stale read: showing the previous state)", "yellow") if s.stale else "",
    )
    parts: list[RenderableType] = [line]
    if st is not None and st.nights:
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for col in ("#", "night", "status", "window", "ran", "success", "reason"):
            table.add_column(col, overflow="fold")
        for n in st.nights:
            ran = (
                f"{fmt_clock(iso_ts(n.started_at), seconds=False)} → "
                f"{fmt_clock(iso_ts(n.ended_at), seconds=False)}"
            )
            window = (
                f"{fmt_clock(iso_ts(n.window_start), True)} → "
                f"{fmt_clock(iso_ts(n.deadline), seconds=False)}"
            )
            table.add_row(
                str(n.index + 1),
                n.name,
                Text(n.status, style=NIGHT_STYLE.get(n.status, "")),
                window,
                ran if n.started_at else "—",
                n.success.level if n.success else NA,
                n.reason or "",
            )
        parts.append(table)
    for n in st.nights if st is not None else []:
        if slept := slept_text(n):
            parts.append(Text(f"night {n.index + 1} {n.name}: {slept}", style="yellow"))
    if s.night is not None and s.night.awake and s.night.status == "running":
        parts.append(Text(f"sleep: {s.night.awake}", style="" if "held by" in s.night.awake
                          else "yellow"))  # fmt: skip
    if st is not None and st.next_start:
        parts.append(Text(f"next night starts {fmt_clock(iso_ts(st.next_start), True)}"))
    title = f"hjepa-night · {fmt_clock(s.taken_at)}"
    return Panel(Group(*parts), title=title, title_align="left")


def _fmt_override(key: str, value: Any) -> str:
    return f"{key}={str(value).lower() if isinstance(value, bool) else value}"


def _progress(s: Snapshot) -> RenderableType:
    n, run, th, fc = s.night, s.run, s.thresholds, s.forecast
    assert n is not None
    att = s.attempt
    rows: list[tuple[str, RenderableType | str]] = []
    started = run.started or {}
    if att is not None:
        resumed = Path(att.resume_from).name if att.resume_from else "start"
        ended = f", ended {att.exit_kind}" if att.exit_kind else ""
        rows.append(
            (
                "attempt",
                f"{att.index} of {len(n.attempts)} (from {resumed}{ended}) · device "
                f"{started.get('device', n.device or NA)} · micro-batch "
                f"{batch_text(started)}",
            )
        )
        overrides = att.overrides or n.overrides
        rows.append(
            (
                "overrides",
                "  ".join(_fmt_override(k, v) for k, v in overrides.items()) or "none",
            )
        )
    total = run.total_epochs or n.epochs_planned
    done = run.epochs_done if run.epochs_done is not None else n.epochs_done
    bar = Table.grid(padding=(0, 1))
    if total:
        bar.add_row(
            ProgressBar(total=float(total), completed=float(done or 0), width=30),
            f"epoch {run.epoch if run.epoch is not None else NA}/{total} "
            f"({done or 0} done) · step {run.step if run.step is not None else NA}",
        )
    else:
        bar.add_row(f"epoch {NA} · step {run.step if run.step is not None else NA}")
    rows.append(("progress", bar))
    per_epoch = run.recent_epoch_seconds()
    rows.append(
        (
            "train time",  # per epoch, the last epochs (evaluation and checkpoints apart)
            Text.assemble(
                epoch_cell(per_epoch, th),
                f"   pace needed {fmt_dur(fc.pace_needed_s)}/epoch" if fc.pace_needed_s else "",
                f"   elapsed {fmt_dur(s.taken_at - st)}"
                if (st := iso_ts(n.started_at)) and n.status == "running"
                else "",
            ),
        )
    )
    rows.append(("forecast", _forecast_text(s)))
    last = run.last_step
    grad = last.grad_norm if last else None
    rows.append(
        (
            "throughput",
            Text.assemble(
                f"{fmt_num(last.img_per_s if last else None, '.1f')} img/s   lr "
                f"{fmt_num(last.lr if last else None, '.2e')}   grad norm ",
                styled(
                    fmt_num(grad, ".2f"),
                    level_high_bad(grad, th.grad_norm_good, th.grad_norm_warning),
                ),
            ),
        )
    )
    hb_age = s.taken_at - run.last_heartbeat_ts if run.last_heartbeat_ts else None
    live = n.status == "running" and att is not None and att.exit_kind is None
    rows.append(
        (
            "worker",
            Text.assemble(
                f"phase {run.phase or NA} · last heartbeat ",
                styled(
                    f"{fmt_dur(hb_age)} ago" if hb_age is not None else NA,
                    (level_high_bad(hb_age, 30, 120) if live else None),
                ),
            ),
        )
    )
    if run.fatal and att is not None and run.fatal.get("attempt") == att.index:
        rows.append(
            (
                "last failure",
                styled(f"{run.fatal.get('kind')}: {run.fatal.get('message', '')}", "critical"),
            )
        )
    title = f"night {n.index + 1} · {n.name} · {n.status}"
    return Panel(
        _kv(rows), title=title, title_align="left", border_style=NIGHT_STYLE.get(n.status, "")
    )


def _forecast_text(s: Snapshot) -> Text:
    fc = s.forecast
    if fc.source == "ended":
        return Text(f"ended {fmt_clock(fc.finish_ts)} (deadline {fmt_clock(fc.deadline_ts)})")
    if fc.finish_ts is None:
        return Text(f"{NA} (deadline {fmt_clock(fc.deadline_ts)})")
    margin = fc.margin_s
    verdict: Text = Text("")
    if margin is not None:
        verdict = (
            styled(f"ON TIME (margin {fmt_dur(margin)})", "good")
            if margin >= 0
            else styled(f"LATE by {fmt_dur(-margin)}", "critical")
        )
    eval_part = " incl. final eval" if fc.final_eval_minutes else ""
    return Text.assemble(
        f"done ≈ {fmt_clock(fc.finish_ts)} ({fc.source}{eval_part}), deadline "
        f"{fmt_clock(fc.deadline_ts)}  ",
        verdict,
    )


def _loss(s: Snapshot, width: int = 48) -> RenderableType:
    steps = s.run.steps
    rows: list[tuple[str, RenderableType | str]] = []
    totals = [p.loss for p in steps]
    rows.append(
        ("total", f"{fmt_num(totals[-1] if totals else None, '.4f'):>8} {sparkline(totals, width)}")
    )
    n_levels = max((len(p.levels) for p in steps), default=0)
    for lv in range(n_levels):
        vals = [p.levels[lv] for p in steps if len(p.levels) > lv]
        rows.append((f"level {lv}", f"{fmt_num(vals[-1], '.4f'):>8} {sparkline(vals, width)}"))
    span = f"last {len(steps)} step events" if steps else "no step events yet"
    return Panel(_kv(rows), title=f"loss ({span})", title_align="left")


def _memory(s: Snapshot) -> RenderableType:
    th, run = s.thresholds, s.run
    sample = run.last_sample or {}

    def mem_cell(value: float | None) -> Text:
        gb = value / GB if value is not None else None
        text = fmt_gb(value)
        if gb is not None and th.memory_ceiling_gb is not None and gb >= th.memory_ceiling_gb:
            text += " (over ceiling)"
        return styled(text, level_high_bad(gb, th.memory_good_gb, th.memory_warning_gb))

    total = device_total(run)
    dev_ceiling = th.device_ceiling_gb(total)

    def device_cell(value: float | None, card: bool) -> Text:
        gb = value / GB if value is not None else None
        text = fmt_gb(value) + (" (whole-card usage)" if card else "")
        if dev_ceiling is None:  # a CPU: its "device" is the host, under the host ceiling
            return mem_cell(value) if not card else styled(text, None)
        if gb is not None and gb >= dev_ceiling:
            text += " (over ceiling)"
        return styled(text, level_high_bad(gb, 0.8 * dev_ceiling, 0.9 * dev_ceiling))

    avail = sample.get("sys_available")
    swap = sample.get("swap_used")
    growth = swap - run.swap_first if swap is not None and run.swap_first is not None else None
    swap_level = None
    if growth is not None and th.swap_growth_gb:
        swap_level = level_high_bad(growth / GB, th.swap_growth_gb / 2, th.swap_growth_gb)
    dev = mem_value(run.device_mem)
    card = dev is None and bool(sample.get("gpu_whole_card"))
    rows: list[tuple[str, RenderableType | str]] = [
        ("worker", mem_cell(sample.get("tree_rss"))),
        ("device", device_cell(dev if dev is not None else sample.get("gpu_used"), card)),
        (
            "available",
            styled(fmt_gb(avail), level_low_bad(avail / GB if avail is not None else None, 5, 2)),
        ),
        (
            "swap",
            Text.assemble(
                styled(fmt_gb(swap), swap_level),
                f" (+{fmt_gb(growth)})" if growth is not None else "",
            ),
        ),
    ]
    host, _, device = th.ceilings_text(total).partition(" · ")
    rows.append(("ceiling", host if th.memory_ceiling_gb else NA))
    if device:
        rows.append(("", device))
    peak = memory_peak(run)
    if peak is not None or th.expected_memory_gb is not None:
        rows.append(("peak", expected_cell(fmt_gb(peak), peak and peak / GB,
                                            th.expected_memory_gb, "GB")))  # fmt: skip
    return Panel(_kv(rows), title="memory", title_align="left")


def _eval(s: Snapshot) -> RenderableType:
    ev, th = s.run.last_eval, s.thresholds
    base = s.night.baseline_metrics if s.night else None
    if ev is None:
        return Panel(Text(f"{NA} (no evaluation yet)"), title="last eval", title_align="left")
    m = metrics_of(ev)
    var = m.feature_variance
    good, warning = th.feature_variance_good, th.feature_variance_warning
    rows: list[tuple[str, RenderableType | str]] = [
        ("kNN 1/5/20", " / ".join(fmt_pct(m.knn.get(k)) for k in ("1", "5", "20"))),
        ("linear probe", fmt_pct(m.linear_probe)),
        ("feature var", styled(fmt_num(var, ".3f"), level_low_bad(var, good, warning))),
        ("eff. rank", fmt_num(ev.get("effective_rank"), ".1f")),
    ]
    if base is not None and ev.get("epoch"):
        rows.append(
            (
                "random init",
                f"kNN20 {fmt_pct(base.knn.get('20'))} · probe {fmt_pct(base.linear_probe)}",
            )
        )
    return Panel(_kv(rows), title=f"last eval (epoch {ev.get('epoch', NA)})", title_align="left")


def _fallbacks(s: Snapshot, limit: int = 6) -> RenderableType:
    if not s.fallbacks:
        return Panel(Text("none"), title="fallbacks", title_align="left")
    table = Table(box=None, pad_edge=False, header_style="bold", expand=True)
    table.add_column("at", no_wrap=True)
    table.add_column("trigger", no_wrap=True, style="yellow")
    table.add_column("action", ratio=2)
    table.add_column("reason / effect", ratio=3)
    for fb in s.fallbacks[:limit]:
        evidence = ", ".join(f"{k}={v}" for k, v in fb.evidence.items())
        table.add_row(
            fmt_clock(iso_ts(fb.at)),
            fb.trigger,
            fb.action,
            "; ".join(x for x in (evidence, fb.effect) if x),
        )
    more = len(s.fallbacks) - limit
    title = f"fallbacks, newest first ({len(s.fallbacks)})"
    body: RenderableType = table if more <= 0 else Group(table, Text(f"… {more} older"))
    return Panel(body, title=title, title_align="left", border_style="yellow")


def render_full(snapshot: Snapshot) -> RenderableType:
    """The full panels for one snapshot (pure; never raises on missing data)."""
    parts: list[RenderableType] = [_header(snapshot)]
    if snapshot.problem or snapshot.night is None:
        parts.append(Panel(Text(snapshot.problem or NA, style="yellow"), title="status"))
        return Group(*parts)
    side = Table.grid(expand=True, padding=(0, 1))
    side.add_column(ratio=1)
    side.add_column(ratio=1)
    side.add_row(_memory(snapshot), _eval(snapshot))
    parts += [_progress(snapshot), _loss(snapshot), side, _fallbacks(snapshot)]
    return Group(*parts)
