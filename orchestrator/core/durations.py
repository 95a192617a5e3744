"""Durations as people write them in plans, runbooks and on the command line."""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([hms])")


def parse_duration(text: str | float | int) -> float:
    """'8h', '90m', '300s', '1h30m' or a number of seconds → seconds (> 0)."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = text.strip().lower()
        parts = _DURATION.findall(s)
        if not parts or _DURATION.sub("", s).strip():
            raise ValueError(f"{text!r} is not a duration (use e.g. 8h, 90m, 300s, 1h30m)")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{text!r} is not a finite duration")
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be > 0")
    return seconds


MIN_WINDOW_S = 60.0  # below a minute no epoch, checkpoint or final evaluation fits
MAX_WINDOW_S = 7 * 24 * 3600.0  # a week: past it the deadline is a typo (and dates overflow)


def parse_window(text: str | float | int, minimum: float = MIN_WINDOW_S) -> float:
    """A night's time window in seconds: :func:`parse_duration`, from ``minimum`` (a minute on
    the command line; plans may be shorter, for tests of the deadline) to a week."""
    seconds = parse_duration(text)
    if seconds > MAX_WINDOW_S:
        raise ValueError(f"{text!r}: a night's window must be at most 7d (168h), e.g. 8h or 90m")
    if seconds < minimum:
        raise ValueError(
            f"{text!r}: a night's window must be between 1m and 7d (168h), e.g. 8h or 90m"
        )
    return seconds
