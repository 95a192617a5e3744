"""The compact layout of the status screen, for terminals under 110×40 (80×24 over ssh or in
a tmux pane): one unwrapped line per fact, cut with an ellipsis at the right edge.

    console.print(render_compact(SnapshotSource(Path("var")).take(), width=80, height=24))
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from orchestrator.core.fold import mem_value
from orchestrator.views.fmt import NA, batch_text, fmt_clock, fmt_dur, fmt_gb, fmt_num, slept_text
from orchestrator.views.screen.levels import NIGHT_STYLE, level_high_bad, styled
from orchestrator.views.snapshot import GB, Snapshot, device_total, iso_ts


def _forecast_short(fc: Any) -> Text:
    """The forecast in one short line: finish (final eval included), deadline, verdict."""
    if fc.source == "ended":
        return Text(f"ended {fmt_clock(fc.finish_ts)} · deadline {fmt_clock(fc.deadline_ts)}")
    margin = fc.margin_s
    verdict = Text(NA)
    if margin is not None:
        verdict = (
            styled(f"ON TIME +{fmt_dur(margin)}", "good")
            if margin >= 0
            else styled(f"LATE by {fmt_dur(-margin)}", "critical")
        )
    return Text.assemble(
        f"done ≈ {fmt_clock(fc.finish_ts, seconds=False) if fc.finish_ts else NA} "
        f"· deadline {fmt_clock(fc.deadline_ts, seconds=False)} · ",
        verdict,
    )


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
    for n in nights:
        if slept := slept_text(n):
            lines.append(_line((_cut(f"{n.index + 1} {slept}", width), "yellow")))
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
            f"{batch_text(started)} · "
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
    dev_ceiling = th.device_ceiling_gb(device_total(run))
    if dev is None and sample.get("gpu_used") is not None:
        dev = sample["gpu_used"]
    card = (
        " (whole card)"
        if mem_value(run.device_mem) is None and sample.get("gpu_whole_card")
        else ""
    )
    dev_text = ""
    if dev is not None:
        dev_text = f" · device {fmt_gb(dev)}{card}"
        dev_text += f" / {dev_ceiling:.1f} GB" if dev_ceiling is not None else ""
    lines.append(
        _line(
            f"{fmt_num(last.img_per_s if last else None, '.1f')} img/s · mem ",
            styled(fmt_gb(rss), level_high_bad(gb, th.memory_good_gb, th.memory_warning_gb)),
            f" / host ceiling {ceiling}",
            dev_text,
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
