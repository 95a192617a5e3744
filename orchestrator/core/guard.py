"""What every command checks before it starts, so a bad input or a bad machine gets one line.

- :func:`degrade_output`: a terminal or pipe whose encoding cannot show the screen's
  characters (``·``, ``—``, ``≈``, box drawing) gets ``?`` in their place, not a
  UnicodeEncodeError.
- :func:`state_dir_problem`: a ``--state-dir`` (or ``init DIR``) that is a file, or that a
  command which writes there cannot write to (a read-only filesystem), is refused by name.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

# verbs that write into the state dir (report: STATE_DIR/reports unless --out elsewhere)
WRITERS = ("start", "run", "join", "stop", "init")


def degrade_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        enc = getattr(stream, "encoding", None) or "ascii"
        try:
            "·—≈│✓".encode(enc)
        except (UnicodeEncodeError, LookupError):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(errors="replace")


def _writable(d: Path) -> str | None:
    try:
        with tempfile.TemporaryFile(dir=d):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def state_dir_problem(args: Any) -> str | None:
    """One sentence naming the directory and the fix, or None when the command may go on."""
    verb = args.verb
    if verb == "init":
        d, flag = Path(args.dir), "init DIR"
    elif hasattr(args, "state_dir"):
        d, flag = Path(args.state_dir), "--state-dir"
    else:
        return None
    if d.exists() and not d.is_dir():
        return f"{flag} {d} is a file, not a directory: give a directory (it is created if missing)"
    parent = d
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{flag} {d}: {parent} is a file, not a directory"
    writes = verb in WRITERS or (verb == "report" and not getattr(args, "out", None))
    writes = writes or (verb == "preflight" and getattr(args, "apply", None) is not None)
    if writes:
        why = _writable(parent)
        if why:
            return f"{flag} {d} is not writable ({why}): give a writable directory"
    return None
