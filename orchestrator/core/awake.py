"""Keeping the machine awake while a night runs, and saying when it cannot be.

    guard = SleepGuard()
    night.awake = guard.hold()      # "held by caffeinate -i -s -w 4242 (pid 4250)" / "not held: …"
    ...
    guard.release()

- macOS: ``caffeinate -i -s -w PID`` — an assertion against idle sleep and (on AC power)
  system sleep; the display may sleep. ``-w`` ties it to this process: a killed daemon
  releases it too.
- Linux: ``systemd-inhibit --what=sleep:idle --mode=block … tail --pid=PID -f /dev/null``, a
  logind lock that ends with this process. Without logind (a container, a non-systemd
  distribution) the inhibitor exits at once and the guard says so.
- Elsewhere, or when the tool is missing: not held, and why.

:func:`power_warnings` is what ``preflight`` and ``start`` print: on battery (``psutil``), or
sleep that cannot be held. A sleep that happens anyway is noticed by the night runner as a
clock gap (``orchestrator/policy/clock.py``) and shown in ``status`` and the report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

WHY = "an hjepa-night training night is running"
SETTLE_S = 0.3  # an inhibitor that cannot reach logind exits within this


def inhibit_command(
    pid: int, platform: str = sys.platform, which: Callable[[str], str | None] = shutil.which
) -> tuple[list[str] | None, str]:
    """(the command that holds off sleep while ``pid`` lives, or None; why not)."""
    if platform == "darwin":
        if which("caffeinate") is None:
            return None, "caffeinate not found"
        return ["caffeinate", "-i", "-s", "-w", str(pid)], ""
    if platform.startswith("linux"):
        if which("systemd-inhibit") is None:
            return None, "systemd-inhibit not found (no systemd/logind)"
        return [
            "systemd-inhibit",
            "--what=sleep:idle",
            "--who=hjepa-night",
            f"--why={WHY}",
            "--mode=block",
            "tail",
            f"--pid={pid}",
            "-f",
            "/dev/null",
        ], ""
    return None, f"no sleep inhibitor known on {platform}"


class SleepGuard:
    """One sleep assertion, held by a child process from :meth:`hold` to :meth:`release`."""

    def __init__(self, pid: int | None = None, platform: str = sys.platform) -> None:
        self.pid = pid or os.getpid()
        self.platform = platform
        self.proc: subprocess.Popen[bytes] | None = None

    def hold(self) -> str:
        """Start the inhibitor; the text the night records (held by what, or why not)."""
        cmd, why = inhibit_command(self.pid, self.platform)
        if cmd is None:
            return f"not held: {why}"
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as exc:
            return f"not held: {cmd[0]}: {exc}"
        time.sleep(SETTLE_S)
        if proc.poll() is not None:
            err = (proc.stderr.read().decode(errors="replace") if proc.stderr else "").strip()
            last = err.splitlines()[-1] if err else f"exit {proc.returncode}"
            return f"not held: {cmd[0]} exited at once ({last})"
        self.proc = proc
        shown = " ".join(cmd[:5] if cmd[0] == "caffeinate" else cmd[:2])
        return f"held by {shown} (pid {proc.pid})"

    def release(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> SleepGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def can_hold(platform: str = sys.platform) -> str | None:
    """Why sleep cannot be held on this machine (None: it can, as far as can be told)."""
    cmd, why = inhibit_command(os.getpid(), platform)
    if cmd is None:
        return why
    if platform.startswith("linux") and not Path("/run/systemd/system").is_dir():
        return "systemd is not running here, so no logind to take a sleep lock from"
    return None


def power_warnings(platform: str = sys.platform) -> list[str]:
    """Warnings for the night: running on battery, sleep that cannot be held off."""
    out = []
    try:
        battery = psutil.sensors_battery()
    except (AttributeError, OSError, NotImplementedError):
        battery = None
    if battery is not None and not battery.power_plugged:
        out.append(
            f"on battery ({battery.percent:.0f}%) — plug the machine in: on battery it may"
            " sleep or throttle whatever is held, and a night drains it"
        )
    why = can_hold(platform)
    if why:
        out.append(
            f"sleep cannot be held off: {why} — set the machine never to sleep on its own"
            " for the night, or sleep pauses the training (noticed and reported, not fixed)"
        )
    return out
