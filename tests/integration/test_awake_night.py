"""A real (tiny) night holds a sleep assertion from its start to its end: stand-ins for
``caffeinate`` and ``systemd-inhibit`` on PATH record when they start and when they end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.workerutil import DEMO, TINY, env, repair_runbook

pytestmark = pytest.mark.slow

STAND_IN = """#!/bin/sh
# records its own lifetime; holds "the assertion" until it is terminated
echo "start $(date +%s.%N) $*" >> "$AWAKE_LOG"
trap 'echo "end $(date +%s.%N)" >> "$AWAKE_LOG"; exit 0' TERM INT
sleep 600 &
wait $!
"""


def test_a_night_holds_sleep_off_while_it_runs_and_lets_go_at_its_end(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("caffeinate", "systemd-inhibit"):
        (bin_dir / name).write_text(STAND_IN)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "awake.log"
    e = {**env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "AWAKE_LOG": str(log)}
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", "--config", str(DEMO),
           "--runbook", repair_runbook(tmp_path),
           "--window", "4m", "--state-dir", "var", "--no-tui"]  # fmt: skip
    for s in [*TINY, "training.epochs=1"]:
        cmd += ["--set", s]
    out = subprocess.run(cmd, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    ended_at = time.time()
    night = json.loads((tmp_path / "var" / "state.json").read_text())["nights"][0]
    assert night["status"] == "succeeded", night["reason"]
    tool = "caffeinate" if sys.platform == "darwin" else "systemd-inhibit"
    assert night["awake"].startswith(f"held by {tool}"), night["awake"]
    lines = log.read_text().splitlines()
    assert len(lines) == 2, lines  # one assertion for the night, released once
    start, end = (float(line.split()[1]) for line in lines)
    args = lines[0].split(maxsplit=2)[2]
    assert ("-i -s -w" in args) if tool == "caffeinate" else ("--what=sleep:idle" in args)
    began = datetime.fromisoformat(night["attempts"][0]["started_at"]).timestamp()
    finished = datetime.fromisoformat(night["ended_at"]).timestamp()
    assert start <= began + 1  # held before the first worker started (second precision)
    assert finished - 1 <= end <= ended_at  # released when the night ended, not later
