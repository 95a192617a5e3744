"""The live status screen in a real terminal: ``hjepa-night status`` inside tmux, reading a
recorded state dir that a writer process keeps appending events and memory samples to."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "states"
TMUX = shutil.which("tmux")

WRITER = r"""
import json, sys, time
run_dir, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
events = open(run_dir + "/events.jsonl", "a")
samples = open(run_dir + "/samples.jsonl", "a")
events.write("\n")  # end the torn line the recording stopped on
for i in range(count):
    step = start + 19 * (i + 1)
    ev = {"v": 1, "type": "step", "ts": time.time(), "epoch": 13, "step": step,
          "loss": 0.4 - 0.001 * i, "loss_levels": [0.2, 0.12, 0.08], "grad_norm": 1.2,
          "lr": 1.0e-4, "img_per_s": 40.0 + i, "micro_batch": 24, "accum_steps": 1,
          "device_mem": {"allocated": 17 * 2**30}}
    events.write(json.dumps(ev) + "\n"); events.flush()
    samples.write(json.dumps({"ts": time.time(), "worker_rss": 20 * 2**30,
                              "tree_rss": (21 + 0.1 * i) * 2**30, "sys_available": 9 * 2**30,
                              "swap_used": 2**29, "gpu_used": None}) + "\n"); samples.flush()
    time.sleep(0.25)
"""


def capture(socket: str) -> str:
    out = subprocess.run(
        [TMUX, "-L", socket, "capture-pane", "-p", "-t", "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout


def wait_for(socket: str, pattern: str, timeout: float = 30.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = capture(socket)
        m = re.search(pattern, screen)
        if m:
            return m
        time.sleep(0.3)
    raise AssertionError(f"{pattern!r} never appeared; last screen:\n{screen}")


@pytest.mark.slow
@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install -y tmux)")
def test_status_screen_updates_live_in_tmux(tmp_path: Path) -> None:
    var = tmp_path / "var"
    shutil.copytree(FIXTURES / "night-running", var)
    run_dir = var / "runs" / "conservative" / "attempt-02"
    socket = f"hjepa-test-{os.getpid()}"
    # COLUMNS/LINES leak into tmux sessions started under pytest; the pane's size must rule
    cmd = (
        f"cd {ROOT} && env -u COLUMNS -u LINES PYTHONPATH={ROOT} {sys.executable} "
        f"-m orchestrator.cli status --state-dir {var}"
    )
    new = ["new-session", "-d", "-s", "status", "-x", "120", "-y", "60", cmd]
    subprocess.run([TMUX, "-L", socket, "-f", "/dev/null", *new], check=True)
    writer = None
    try:
        # the first frame may be drawn before tmux settles the window size: wait for a full one
        wait_for(socket, r"fallbacks, newest first \(1\)")
        screen = capture(socket)
        assert "night 1 · conservative · running" in screen and "LATE by" in screen
        first = int(re.search(r"step (\d+)", screen).group(1))  # type: ignore[union-attr]
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir), str(first), "40"])
        # the screen follows the growing file: a later step, the new throughput and memory
        later = wait_for(socket, rf"step (?!{first}\b)(\d+)")
        assert int(later.group(1)) > first
        wait_for(socket, r"4\d\.\d img/s")
        wait_for(socket, r"worker\s+2[12]\.\d GB")
        assert writer.wait(timeout=30) == 0
        wait_for(socket, rf"step {first + 19 * 40}\b")  # the last event written
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        subprocess.run([TMUX, "-L", socket, "kill-server"], check=False)


@pytest.mark.slow
@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install -y tmux)")
def test_status_screen_at_80x24_and_resized_live(tmp_path: Path) -> None:
    var = tmp_path / "var"
    shutil.copytree(FIXTURES / "night-running", var)
    socket = f"hjepa-test-small-{os.getpid()}"
    cmd = (
        f"cd {ROOT} && env -u COLUMNS -u LINES PYTHONPATH={ROOT} {sys.executable} "
        f"-m orchestrator.cli status --state-dir {var}"
    )
    new = ["new-session", "-d", "-s", "status", "-x", "80", "-y", "24", cmd]
    subprocess.run([TMUX, "-L", socket, "-f", "/dev/null", *new], check=True)
    try:
        wait_for(socket, r"fallback \d\d:\d\d oom:")
        screen = capture(socket)
        lines = screen.splitlines()
        assert len(lines) <= 24 and all(len(ln) <= 80 for ln in lines)
        assert any("1 conservative" in ln and "running" in ln for ln in lines)
        assert any("2 aggressive" in ln and "pending" in ln for ln in lines)
        for pattern in (r"epoch 13/50 · step \d+", r"deadline 06:00 · LATE by", r"img/s",
                        r"/ host ceiling 28 GB"):  # fmt: skip
            assert re.search(pattern, screen), pattern
        # a bigger pane gets the full panels on the next frame, without a restart
        subprocess.run([TMUX, "-L", socket, "resize-window", "-t", "status", "-x", "150",
                        "-y", "50"], check=True)  # fmt: skip
        wait_for(socket, r"fallbacks, newest first \(1\)")
    finally:
        subprocess.run([TMUX, "-L", socket, "kill-server"], check=False)
