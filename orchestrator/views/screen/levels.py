"""Readings coloured by the runbook's thresholds: good (green) / warning (yellow) / critical
(red), for the full panels and the compact layout alike.

    styled(fmt_gb(rss), level_high_bad(rss / GB, th.memory_good_gb, th.memory_warning_gb))
    styled(fmt_dur(s), level_in_range(s / 60, th.expected_epoch_minutes))  # the recipe's range

A level is None when the reading or a threshold is missing: the text is then shown unstyled.
"""

from __future__ import annotations

from rich.text import Text

from orchestrator.views.fmt import fmt_dur
from orchestrator.views.snapshot import Thresholds

STYLE = {"good": "green", "warning": "yellow", "critical": "bold red", None: ""}
NIGHT_STYLE = {
    "succeeded": "green",
    "partial": "yellow",
    "failed": "bold red",
    "running": "cyan",
    "stopped": "magenta",
}


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


def level_in_range(
    value: float | None, expected: tuple[float | None, float | None] | None, slack: float = 0.25
) -> str | None:
    """Against the recipe's expected range (low, high): good inside; above ``high`` warning up
    to ``slack`` over it, critical beyond; below ``low`` warning (unusual, not a danger: a
    faster epoch or a smaller peak than the recipe's). None when unknown."""
    if value is None or expected is None:
        return None
    low, high = expected
    if high is not None and value > high:
        return "warning" if value <= high * (1 + slack) else "critical"
    if low is not None and value < low:
        return "warning"
    return "good"


def range_text(expected: tuple[float | None, float | None], unit: str) -> str:
    """ "9 – 10 min", "≤ 2 GB", "≥ 12 GB"."""
    low, high = expected
    if low is not None and high is not None:
        return f"{low:g} – {high:g} {unit}"
    return f"≤ {high:g} {unit}" if high is not None else f"≥ {low:g} {unit}"


def styled(text: str, level: str | None) -> Text:
    return Text(text, style=STYLE[level])


def epoch_cell(per_epoch: float | None, th: Thresholds) -> Text:
    """The epoch time, shaded against the recipe's expected range where the runbook has one,
    else against the ``display.epoch_minutes`` bands."""
    minutes = per_epoch / 60 if per_epoch else None
    if th.expected_epoch_minutes is not None:
        return expected_cell(fmt_dur(per_epoch), minutes, th.expected_epoch_minutes, "min")
    return styled(
        fmt_dur(per_epoch), level_high_bad(minutes, th.epoch_minutes_good, th.epoch_minutes_warning)
    )


def expected_cell(
    text: str, value: float | None, expected: tuple[float | None, float | None] | None, unit: str
) -> Text:
    """``text`` shaded by :func:`level_in_range`, with the expected range beside it."""
    if expected is None:
        return styled(text, None)
    return Text.assemble(
        styled(text, level_in_range(value, expected)), f" (expected {range_text(expected, unit)})"
    )
