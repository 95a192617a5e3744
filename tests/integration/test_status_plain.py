"""``hjepa-night status`` on a terminal rich cannot drive (``TERM=dumb``, through a real pty)
prints plain frames instead of a blank screen and leaves at once on Ctrl-C; a nonsense
``--width`` is refused (exit 2). The pause between frames ends on a SIGINT even when the signal
came just before the pause began (``orchestrator/views/screen/wait.py``)."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.views.screen.wait import FrameWait
from tests.workerutil import ROOT, env

pytestmark = pytest.mark.slow  # real processes


def test_status_on_a_dumb_terminal_prints_plain_frames(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "status", "--state-dir", str(tmp_path)],
        stdin=follower, stdout=follower, stderr=follower, cwd=ROOT,
        env={**env(), "TERM": "dumb"}, start_new_session=True,
    )  # fmt: skip
    os.close(follower)
    seen = b""
    try:
        end = time.monotonic() + 30
        while b"no state file" not in seen and time.monotonic() < end:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(leader, 4096)
                except OSError:
                    break
        assert b"no state file" in seen, seen[-500:]
        assert b"\x1b[?1049h" not in seen  # no alternate screen on a dumb terminal
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        # it sleeps 15 s between plain frames: a Ctrl-C must not wait for the next one
        drain_until_exit(proc, leader, 5)
        os.close(leader)


def drain_until_exit(proc: subprocess.Popen, leader: int, timeout_s: float) -> None:
    """Wait for ``proc`` while reading its terminal: a frame it writes after the test stopped
    reading (or its goodbye on SIGINT) must not block it on a full pty buffer."""
    end = time.monotonic() + timeout_s
    while proc.poll() is None:
        assert time.monotonic() < end, f"status did not exit within {timeout_s:.0f} s of SIGINT"
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            with contextlib.suppress(OSError):
                os.read(leader, 65536)


@pytest.mark.parametrize("width", ["-5", "0", "5", "100000"])
def test_a_nonsense_width_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], width: str
) -> None:
    assert main(["status", "--once", "--state-dir", str(tmp_path), f"--width={width}"]) == 2
    assert "--width" in capsys.readouterr().err


def test_a_sigint_just_before_the_pause_ends_it_at_once() -> None:
    """The race ``time.sleep`` loses: the signal is handled after the last check and before
    the sleep starts. A handler that does not raise stands in for that moment."""
    assert threading.current_thread() is threading.main_thread()  # signals reach only it
    handled: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: handled.append(signum))
    try:
        with FrameWait() as wait:
            os.kill(os.getpid(), signal.SIGINT)
            assert handled == [signal.SIGINT]  # handled: from here on only the pipe knows
            start = time.monotonic()
            assert wait(30.0) is True
            assert time.monotonic() - start < 5
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_pause_lasts_its_time_and_other_signals_do_not_end_it() -> None:
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        with FrameWait() as wait:
            start = time.monotonic()
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            assert wait(0.3) is False
            assert time.monotonic() - start >= 0.3
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert signal.set_wakeup_fd(before) == before  # the previous wakeup fd is back


def test_outside_the_main_thread_the_pause_is_a_plain_sleep() -> None:
    results: list[bool] = []

    def screen_thread() -> None:  # the daemon's screen (start --foreground)
        with FrameWait() as wait:
            results.append(wait(0.05))

    t = threading.Thread(target=screen_thread)
    t.start()
    t.join(10)
    assert results == [False]
