"""Files the user wrote: read as UTF-8 whatever the locale, edited only round-trip.

A command that edits a plan the user wrote keeps its comments, quoting and layout (ruamel's
round-trip loader/dumper) and leaves the previous text beside it as ``FILE.bak``; the new text
is written to a temporary file and renamed over the old one, so a failure mid-write leaves the
original. Every other command only reads user files, through :func:`read_text`, which turns a
binary or non-UTF-8 file into one sentence naming it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, read_utf8


class UserFileError(ValueError):
    """A user file that cannot be read or edited; the message names the file and the fix."""


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of ``path`` decoded as UTF-8; raises UserFileError for a missing, unreadable,
    directory or non-UTF-8 file (a NUL byte counts as binary: ``trainer.config.read_utf8``,
    the one UTF-8 reader of user YAML)."""
    p = Path(path)
    if not p.exists():
        raise UserFileError(f"{what} {p} not found")
    if p.is_dir():
        raise UserFileError(f"{what} {p} is a directory, not a file")
    try:
        return read_utf8(p, what)
    except ConfigError as exc:
        raise UserFileError(str(exc)) from None


def _yaml() -> Any:
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def edit_yaml(path: str | Path, edit: Callable[[Any], bool], *, backup: bool = True) -> bool:
    """Load ``path`` round-trip, call ``edit(doc)`` (it changes ``doc`` in place and returns
    whether it changed anything) and, if it did, write the file back with its comments and
    layout, keeping the old text as ``PATH.bak`` when ``backup``. Returns what ``edit`` returned.
    Raises UserFileError for a file that is not readable UTF-8 YAML or cannot be written."""
    from ruamel.yaml.error import YAMLError

    p = Path(path)
    text = read_text(p, "plan")
    y = _yaml()
    try:
        doc = y.load(text)
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserFileError(f"{p} is not valid YAML: {first}") from None
    if not edit(doc):
        return False
    buf = io.StringIO()
    y.dump(doc, buf)
    tmp = p.with_name(p.name + ".tmp")
    try:
        if backup:
            shutil.copy2(p, p.with_name(p.name + ".bak"))
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(p)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserFileError(f"cannot write {p}: {exc.strerror or exc}") from None
    return True
