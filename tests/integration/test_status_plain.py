"""``hjepa-night status`` on a terminal rich cannot drive (``TERM=dumb``, through a real pty)
prints plain frames instead of a blank screen; a nonsense ``--width`` is refused (exit 2)."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
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
        drain_until_exit(proc, leader, 30)
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
