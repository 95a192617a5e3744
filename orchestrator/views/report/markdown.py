"""Markdown and shell text for the morning report: tables, and overrides as ``--set`` args.

    md_table(["metric", "value"], [["linear probe", "63.1%"]])   # lines, a blank one last
    set_args({"training.lr": 1e-4})                               # "--set training.lr=0.0001"

A ``|`` in a cell is escaped and a newline becomes a space, so one row stays one table row.
"""

from __future__ import annotations

import shlex
from typing import Any


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def fmt_set(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    import json

    return json.dumps(value)


def set_args(overrides: dict[str, Any]) -> str:
    return " ".join(f"--set {shlex.quote(f'{k}={fmt_set(v)}')}" for k, v in overrides.items())
