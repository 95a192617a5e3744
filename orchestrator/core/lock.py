"""One owner per state dir: ``fcntl.flock`` on ``STATE_DIR/daemon.lock``.

The daemon (and ``hjepa-night run``) holds the lock for its whole life; the file names its pid,
create time and start. The kernel drops the lock when the process dies, so a stale lock is
simply taken over. ``lock_owner`` tells readers who holds it without ever taking it.
"""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

from orchestrator.core.state import now_iso
from orchestrator.core.system import System

LOCK_FILE = "daemon.lock"


# ------------------------------------------------------------------------------------------
# one daemon per state dir
class DaemonLock:
    """``flock`` on ``STATE_DIR/daemon.lock``, held for the daemon's life; the file names it."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fh: Any = None

    def acquire(self, wait_s: float = 2.0) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        end = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > end:  # a prober's shared lock lasts microseconds
                    fh.close()
                    return False
                time.sleep(0.05)
        pid, create_time = System().me()
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": pid, "create_time": create_time, "since": now_iso()}))
        fh.flush()
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            self._fh.truncate(0)
            self._fh.close()  # closing drops the flock
            self._fh = None


def lock_owner(state_dir: Path) -> dict[str, Any] | None:
    """``{pid, create_time, since}`` of the live daemon owning ``state_dir``, or None."""
    path = Path(state_dir) / LOCK_FILE
    try:
        fh = path.open("r")
    except FileNotFoundError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return dict(json.loads(fh.read() or "{}")) or {"pid": None}
            except json.JSONDecodeError:
                return {"pid": None}
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None
