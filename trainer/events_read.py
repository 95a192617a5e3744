"""Reading ``events.jsonl``: one line, a whole file, or a growing file as it grows.

The schema is in ``trainer/events.py``; readers never raise on a blank, truncated or foreign
line (it is skipped), so a supervisor can tail the file of a worker that is still writing it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def parse_event(line: str) -> dict[str, Any] | None:
    """One events.jsonl line → dict, or None for a blank/truncated/foreign line (never raises)."""
    line = line.strip()
    if not line:
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "type" not in obj or "ts" not in obj:
        return None
    return obj


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """All complete events of a file (a half-written last line is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    with p.open("r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            ev = parse_event(line)
            if ev is not None:
                out.append(ev)
    return out


class EventTail:
    """Incremental reader of a growing JSONL file: ``poll()`` returns the new complete lines,
    each parsed by ``parse`` (default: :func:`parse_event`; lines it maps to None are skipped)."""

    def __init__(
        self, path: str | Path, parse: Callable[[str], dict[str, Any] | None] = parse_event
    ) -> None:
        self.path = Path(path)
        self.parse = parse
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except OSError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = []
        for raw in lines:
            ev = self.parse(raw.decode("utf-8", errors="replace"))
            if ev is not None:
                out.append(ev)
        return out
