"""The pause between two frames of the status screen, which Ctrl-C ends at once.

    with FrameWait() as wait:
        while True:
            draw()
            if wait(15.0):  # True: Ctrl-C (SIGINT) arrived during, or just before, the wait
                break

``time.sleep`` alone is not enough: Python acts on a signal between bytecodes, so a SIGINT that
lands after the interpreter's last check and before the sleep's system call starts is raised
only when the sleep ends. On a loaded machine that happens often enough to see (6 of 45 Ctrl-Cs
sent right after a plain frame waited out the whole 15 s). Here the signal's C-level handler
also writes the signal's number into a pipe (``signal.set_wakeup_fd``) and the wait selects on
that pipe, so a signal that came before the wait started ends it as promptly as one that comes
during it. Python's own SIGINT handler is left in place: ``KeyboardInterrupt`` still stops a
frame that is being built or drawn.

Only the main thread receives signals and may set the wakeup fd; in another thread (the
daemon's screen in ``start --foreground``) the wait is a plain sleep and the owner of the
process decides what a signal does.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from types import TracebackType


class FrameWait:
    """Context manager: installs the wakeup pipe on enter (main thread only), restores the
    previous wakeup fd and closes the pipe on exit; calling it waits."""

    def __init__(self) -> None:
        self._pipe: tuple[int, int] | None = None
        self._previous = -1

    def __enter__(self) -> FrameWait:
        if threading.current_thread() is not threading.main_thread():
            return self
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)  # a handler must never block on a full pipe
        self._previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._pipe = (read, write)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous)
        for fd in self._pipe:
            os.close(fd)
        self._pipe = None

    def __call__(self, seconds: float) -> bool:
        """Wait ``seconds``; True as soon as a SIGINT has arrived (Python's handler usually
        raises ``KeyboardInterrupt`` first). Other signals with a Python handler do not end
        the wait."""
        if self._pipe is None:
            time.sleep(seconds)
            return False
        read = self._pipe[0]
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([read], [], [], left)
            if not ready:
                continue
            try:
                signums = os.read(read, 512)
            except BlockingIOError:
                continue
            if signal.SIGINT in signums:
                return True
        return False
