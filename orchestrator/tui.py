"""The live status screen: ``hjepa-night status [--state-dir var] [--once]``.

    run_status(Path("var"), once=False)   # rich Live, one frame a second, Ctrl-C to leave
    console.print(render(SnapshotSource(Path("var")).take()))

``render`` draws one immutable :class:`~orchestrator.views.snapshot.Snapshot` (gathered off the draw
path) and answers "is it OK, and will it finish by morning?": plan and nights, the current
attempt and its overrides, progress with the forecast finish against the deadline, loss
sparklines (total and per level), throughput, memory coloured by the runbook thresholds, the
last evaluation, and the fallbacks newest first. Any missing reading renders as "N/A".

Colours: good (green) / warning (yellow) / critical (red). Memory (worker tree, device) against
``memory.good_gb``/``warning_gb`` (critical at or above ``warning_gb``; "over ceiling" at
``ceiling_gb``); epoch minutes and grad norm against ``display.*`` (higher is worse); feature
std against ``display.feature_std`` (lower is worse); swap growth since the attempt's first
sample against ``memory.swap_growth_gb`` (warning from half of it); system available memory
is this screen's own rule: warning under 5 GB, critical under 2 GB.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.views.fmt import NA, fmt_clock, fmt_dur, fmt_gb, fmt_num, fmt_pct
from orchestrator.views.snapshot import GB, Snapshot, SnapshotSource, iso_ts, mem_value

BLOCKS = "▁▂▃▄▅▆▇█"
STYLE = {"good": "green", "warning": "yellow", "critical": "bold red", None: ""}


def level_high_bad(value: float | None, good: float | None, warning: float | None) -> str | None:
    """good below ``good``, warning below ``warning``, else critical (None if unknown)."""
    if value is None or good is None or warning is None:
        return None
    return "good" if value < good else "warning" if value < warning else "critical"


def level_low_bad(value: float | None, good: float | None, warning: float | None) -> str | None:
    """good above ``good``, warning above ``warning``, else critical (None if unknown)."""
    if value is None or good is None or warning is None:
        return None
    return "good" if value > good else "warning" if value > warning else "critical"


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


def _styled(text: str, level: str | None) -> Text:
    return Text(text, style=STYLE[level])


def _kv(rows: list[tuple[str, RenderableType | str]]) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    for key, value in rows:
        grid.add_row(key, value)
    return grid


# ---------------------------------------------------------------------------------------------
# panels
NIGHT_STYLE = {"succeeded": "green", "partial": "yellow", "failed": "bold red", "running": "cyan"}


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
                f"{started.get('micro_batch', NA)}×{started.get('accum_steps', NA)}",
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
    minutes = per_epoch / 60 if per_epoch else None
    rows.append(
        (
            "epoch time",
            Text.assemble(
                _styled(
                    f"{fmt_dur(per_epoch)}",
                    level_high_bad(minutes, th.epoch_minutes_good, th.epoch_minutes_warning),
                ),
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
                _styled(
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
                _styled(
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
                _styled(f"{run.fatal.get('kind')}: {run.fatal.get('message', '')}", "critical"),
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
            _styled(f"ON TIME (margin {fmt_dur(margin)})", "good")
            if margin >= 0
            else _styled(f"LATE by {fmt_dur(-margin)}", "critical")
        )
    eval_part = " incl. final eval" if fc.final_eval_minutes else ""
    return Text.assemble(
        f"done ≈ {fmt_clock(fc.finish_ts)} ({fc.source}{eval_part}), deadline "
        f"{fmt_clock(fc.deadline_ts)}  ",
        verdict,
    )


def _forecast_short(fc: Any) -> Text:
    """The forecast in one short line: finish (final eval included), deadline, verdict."""
    if fc.source == "ended":
        return Text(f"ended {fmt_clock(fc.finish_ts)} · deadline {fmt_clock(fc.deadline_ts)}")
    margin = fc.margin_s
    verdict = Text(NA)
    if margin is not None:
        verdict = (
            _styled(f"ON TIME +{fmt_dur(margin)}", "good")
            if margin >= 0
            else _styled(f"LATE by {fmt_dur(-margin)}", "critical")
        )
    return Text.assemble(
        f"done ≈ {fmt_clock(fc.finish_ts, seconds=False) if fc.finish_ts else NA} "
        f"· deadline {fmt_clock(fc.deadline_ts, seconds=False)} · ",
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
        return _styled(text, level_high_bad(gb, th.memory_good_gb, th.memory_warning_gb))

    avail = sample.get("sys_available")
    swap = sample.get("swap_used")
    growth = swap - run.swap_first if swap is not None and run.swap_first is not None else None
    swap_level = None
    if growth is not None and th.swap_growth_gb:
        swap_level = level_high_bad(growth / GB, th.swap_growth_gb / 2, th.swap_growth_gb)
    dev = mem_value(run.device_mem)
    rows: list[tuple[str, RenderableType | str]] = [
        ("worker", mem_cell(sample.get("tree_rss"))),
        ("device", mem_cell(dev if dev is not None else sample.get("gpu_used"))),
        (
            "available",
            _styled(fmt_gb(avail), level_low_bad(avail / GB if avail is not None else None, 5, 2)),
        ),
        (
            "swap",
            Text.assemble(
                _styled(fmt_gb(swap), swap_level),
                f" (+{fmt_gb(growth)})" if growth is not None else "",
            ),
        ),
        ("ceiling", f"{th.memory_ceiling_gb:g} GB" if th.memory_ceiling_gb else NA),
    ]
    peak = run.sample_peaks.get("tree_rss")
    if peak is not None:
        rows.append(("peak", fmt_gb(peak)))
    return Panel(_kv(rows), title="memory", title_align="left")


def _eval(s: Snapshot) -> RenderableType:
    ev, th = s.run.last_eval, s.thresholds
    base = s.night.baseline_metrics if s.night else None
    if ev is None:
        return Panel(Text(f"{NA} (no evaluation yet)"), title="last eval", title_align="left")
    knn = ev.get("knn") or {}
    std = ev.get("feature_std")
    rows: list[tuple[str, RenderableType | str]] = [
        ("kNN 1/5/20", " / ".join(fmt_pct(knn.get(k)) for k in ("1", "5", "20"))),
        ("linear probe", fmt_pct(ev.get("linear_probe"))),
        (
            "feature std",
            _styled(
                fmt_num(std, ".3f"), level_low_bad(std, th.feature_std_good, th.feature_std_warning)
            ),
        ),
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


COMPACT_BELOW = (110, 40)  # width, height: smaller terminals get the compact layout


def render(snapshot: Snapshot, size: tuple[int, int] | None = None) -> RenderableType:
    """One frame for one snapshot (pure; never raises on missing data). ``size`` (columns,
    rows) picks the layout: below ``COMPACT_BELOW`` in either, :func:`render_compact`;
    None or larger, the full panels."""
    if size is not None and (size[0] < COMPACT_BELOW[0] or size[1] < COMPACT_BELOW[1]):
        return render_compact(snapshot, size[0], size[1])
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


def _line(*parts: str | tuple[str, str] | Text) -> Text:
    """One screen line that never wraps (cut with an ellipsis at the right edge)."""
    text = Text.assemble(*parts)
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def render_compact(s: Snapshot, width: int = 80, height: int = 24) -> RenderableType:
    """The small-terminal layout (80×24 over ssh or in a tmux pane): one unwrapped line each
    for the header, every night (name, status, window, success), the shown night's attempt,
    epoch/step with a bar, the forecast against the deadline, img/s and memory against the
    ceiling, and the newest fallback. Nights beyond the rows left are summarised."""
    st = s.state
    plan = st.plan.name if st and st.plan else "run"
    daemon = NA
    if st is not None and st.daemon is not None:
        daemon = "up" if s.daemon_alive else "down"
    updated = iso_ts(st.updated_at) if st else None
    lines: list[RenderableType] = [
        _line(
            ("hjepa-night ", "bold"),
            f"{fmt_clock(s.taken_at)} · plan {plan} · daemon {daemon} · updated "
            f"{fmt_dur(s.taken_at - updated) + ' ago' if updated else NA}",
            (" · stale", "yellow") if s.stale else "",
        )
    ]
    nights = list(st.nights) if st else []
    room = max(1, height - 9)
    name_w = max(6, min(16, width - 48))
    for n in nights[:room]:
        window = (
            f"{fmt_clock(iso_ts(n.window_start), seconds=False)}→"
            f"{fmt_clock(iso_ts(n.deadline), seconds=False)}"
        )
        lines.append(
            _line(
                f"{n.index + 1} {_cut(n.name, name_w):<{name_w}} ",
                (f"{n.status:<9}", NIGHT_STYLE.get(n.status, "")),
                f" {window:<12} {n.success.level if n.success else '-'}",
                f"  {n.reason}" if n.reason else "",
            )
        )
    if len(nights) > room:
        lines.append(_line(f"… {len(nights) - room} more nights"))
    if s.problem or s.night is None:
        lines.append(_line((s.problem or NA, "yellow")))
        return Group(*lines)
    n, run, th, fc = s.night, s.run, s.thresholds, s.forecast
    started = run.started or {}
    att = s.attempt
    lines.append(
        _line(
            (f"night {n.index + 1} {n.name}", "bold"),
            f" · attempt {att.index if att else NA}/{len(n.attempts)} · "
            f"{started.get('micro_batch', NA)}×{started.get('accum_steps', NA)} · "
            f"{started.get('device', n.device or NA)}",
        )
    )
    total = run.total_epochs or n.epochs_planned
    done = run.epochs_done if run.epochs_done is not None else n.epochs_done
    label = (
        f" epoch {run.epoch if run.epoch is not None else NA}/{total or NA}"
        f" · step {run.step if run.step is not None else NA}"
    )
    bar_w = max(5, min(30, width - len(label) - 1))
    filled = int(bar_w * (done or 0) / total) if total else 0
    lines.append(_line(("█" * filled, "cyan"), ("░" * (bar_w - filled), "dim"), label))
    lines.append(_line(_forecast_short(fc)))
    last = run.last_step
    sample = run.last_sample or {}
    dev = mem_value(run.device_mem)
    rss = sample.get("tree_rss")
    gb = rss / GB if rss is not None else None
    ceiling = f"{th.memory_ceiling_gb:g} GB" if th.memory_ceiling_gb else NA
    lines.append(
        _line(
            f"{fmt_num(last.img_per_s if last else None, '.1f')} img/s · mem ",
            _styled(fmt_gb(rss), level_high_bad(gb, th.memory_good_gb, th.memory_warning_gb)),
            f" / ceiling {ceiling}",
            f" · device {fmt_gb(dev)}" if dev is not None else "",
        )
    )
    if s.fallbacks:
        fb = s.fallbacks[0]
        lines.append(
            _line(
                (f"fallback {fmt_clock(iso_ts(fb.at), seconds=False)} {fb.trigger}: ", "yellow"),
                f"{fb.action} ({len(s.fallbacks)} in all)",
            )
        )
    else:
        lines.append(_line("fallbacks: none"))
    if run.fatal and att is not None and run.fatal.get("attempt") == att.index:
        lines.append(_line((f"last failure {run.fatal.get('kind')}", "bold red")))
    return Group(*lines)


def run_status(state_dir: Path, once: bool, width: int | None = None) -> int:
    """Show the status screen for ``state_dir``: one frame with ``once``, else live until Ctrl-C.

    The layout follows the terminal's size on every frame (resize live); ``width`` forces the
    columns (``--width``). Exit 0 (also on Ctrl-C); 1 with ``once`` when there is no readable
    state file."""
    source = SnapshotSource(Path(state_dir))
    console = Console(width=width) if width else Console()

    def size() -> tuple[int, int]:
        return (width or console.size.width, console.size.height)

    if once:
        snap = source.take()
        console.print(render(snap, size()))
        return 1 if snap.state is None else 0
    from rich.live import Live

    try:
        with Live(
            render(source.take(), size()),
            console=console,
            refresh_per_second=1,
            screen=console.is_terminal,
            redirect_stderr=False,
        ) as live:
            while True:
                time.sleep(1.0)
                live.update(render(source.take(), size()))
    except KeyboardInterrupt:
        return 0
