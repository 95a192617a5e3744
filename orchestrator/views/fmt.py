"""Text formatters shared by the status screen and the morning report.

    fmt_dur(3930) == "1h05m"    fmt_gb(2 * GB) == "2.0 GB"    fmt_pct(0.631) == "63.1%"

Every formatter takes None for a missing reading and returns :data:`NA` ("N/A") for it, so a
view never crashes on a reading it does not have. Clock times are local time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestrator.views.snapshot import GB

NA = "N/A"


def fmt_gb(value: float | None) -> str:
    return NA if value is None else f"{value / GB:.1f} GB"


def fmt_pct(value: float | None) -> str:
    return NA if value is None else f"{100 * value:.1f}%"


def fmt_num(value: float | None, spec: str = ".3g") -> str:
    return NA if value is None else format(value, spec)


def fmt_dur(seconds: float | None) -> str:
    """1h05m / 12m30s / 45s; negative durations get a minus sign."""
    if seconds is None:
        return NA
    sign, s = ("-" if seconds < 0 else ""), round(abs(seconds))
    if s >= 3600:
        return f"{sign}{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{sign}{s // 60}m{s % 60:02d}s"
    return f"{sign}{s}s"


def fmt_clock(ts: float | None, with_date: bool = False, seconds: bool = True) -> str:
    if ts is None:
        return NA
    fmt = "%a %H:%M" if with_date else "%H:%M:%S" if seconds else "%H:%M"
    return datetime.fromtimestamp(ts).strftime(fmt)


def batch_text(started: dict[str, Any]) -> str:
    """``micro×accum`` of one attempt, ``micro×accum×ranks = global`` with several ranks."""
    micro, accum = started.get("micro_batch", NA), started.get("accum_steps", NA)
    world = int(started.get("world_size") or 1)
    if world == 1:
        return f"{micro}×{accum}"
    return f"{micro}×{accum}×{world} = {started.get('global_batch', NA)}"


def slept_text(night: Any) -> str | None:
    """ "the machine slept 2h10m (1 time, noticed 03:12) …" for a night with clock gaps
    (``Night.clock_gaps``), else None: the one wording of the screen and the report."""
    gaps = list(getattr(night, "clock_gaps", None) or [])
    if not gaps:
        return None
    total = sum(g.seconds for g in gaps)
    times = f"{len(gaps)} time" + ("s" if len(gaps) > 1 else "")
    last = gaps[-1].at[11:16] if len(gaps[-1].at) >= 16 else gaps[-1].at
    return (
        f"the machine slept {fmt_dur(total)} during this night ({times}, last noticed {last}):"
        " training paused and the window shrank by that much; not counted as a hang"
    )


def sleep_lines(night: Any) -> list[str]:
    """The report's lines: how sleep was held off, and any sleep that happened anyway."""
    out = [f"- sleep: {night.awake}"] if getattr(night, "awake", None) else []
    if slept := slept_text(night):
        out.append(f"- **{slept[0].upper()}{slept[1:]}**")
    return out
