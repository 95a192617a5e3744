"""Readings coloured by the runbook's thresholds: good (green) / warning (yellow) / critical
(red), for the full panels and the compact layout alike.

    styled(fmt_gb(rss), level_high_bad(rss / GB, th.memory_good_gb, th.memory_warning_gb))

A level is None when the reading or a threshold is missing: the text is then shown unstyled.
"""

from __future__ import annotations

from rich.text import Text

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


def styled(text: str, level: str | None) -> Text:
    return Text(text, style=STYLE[level])
