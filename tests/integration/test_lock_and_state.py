"""The real daemon process, idling before its night: detach, one per state dir, stop, kill -9
and take-over, status --json without a daemon, corrupt and newer state files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import yaml

from orchestrator.schedule.plan import local_now

pytestmark = pytest.mark.slow  # real processes


ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def status(state_dir: Path) -> dict:
    out = cli("status", "--json", "--state-dir", str(state_dir))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def idle_plan(tmp_path: Path) -> Path:
    """A one-night plan whose window opens in 6 hours: the daemon waits, training nothing."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data: {dataset: synthetic}\n")
    rb = tmp_path / "rb.yaml"
    rb.write_text("name: test\n")
    start = (local_now() + timedelta(hours=6)).strftime("%H:%M")
    plan = {"name": "idle", "report_at": None,
            "nights": [{"name": "later", "config": str(cfg), "runbook": str(rb),
                        "start": start, "window": "1h"}]}  # fmt: skip
    path = tmp_path / "idle.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def wait_gone(pid: int, seconds: float = 20) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and psutil.pid_exists(pid):
        with_status = psutil.Process(pid).status() if psutil.pid_exists(pid) else None
        if with_status == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.1)


def test_detached_daemon_is_alone_reports_itself_and_stops(tmp_path: Path, idle_plan: Path):
    var = tmp_path / "var"
    started = cli("start", "--plan", str(idle_plan), "--state-dir", str(var))
    assert started.returncode == 0, started.stderr
    pid = int(re.search(r"pid (\d+)", started.stdout).group(1))  # type: ignore[union-attr]
    assert str(var / "daemon.log") in started.stdout and "hjepa-night stop" in started.stdout
    try:
        snap = status(var)
        assert snap["daemon_alive"] is True and snap["daemon"]["pid"] == pid
        assert snap["plan"]["name"] == "idle" and snap["current_night"] is None
        assert snap["next_start"] == snap["nights"][0]["window_start"]
        assert snap["nights"][0]["status"] == "pending"

        second = cli("start", "--plan", str(idle_plan), "--state-dir", str(var))
        assert second.returncode == 1
        assert f"pid {pid}" in second.stderr and "already owns" in second.stderr

        stopped = cli("stop", "--state-dir", str(var), "--timeout", "30")
        assert stopped.returncode == 0, stopped.stderr
        wait_gone(pid)
        snap = status(var)
        assert snap["daemon_alive"] is False and snap["daemon"] is None
        assert "plan idle started" in (var / "daemon.log").read_text()
        assert cli("stop", "--state-dir", str(var)).stdout.startswith("no daemon")
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)


def test_kill_9_leaves_a_stale_lock_that_the_next_start_takes_over(tmp_path, idle_plan):
    var = tmp_path / "var"
    first = cli("start", "--plan", str(idle_plan), "--state-dir", str(var))
    pid = int(re.search(r"pid (\d+)", first.stdout).group(1))  # type: ignore[union-attr]
    window = status(var)["nights"][0]["window_start"]
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    snap = status(var)  # works after a crash, shows the dead daemon's record
    assert snap["daemon_alive"] is False and snap["daemon"]["pid"] == pid
    again = cli("start", "--plan", str(idle_plan), "--state-dir", str(var))
    assert again.returncode == 0, again.stderr
    pid2 = int(re.search(r"pid (\d+)", again.stdout).group(1))  # type: ignore[union-attr]
    try:
        snap = status(var)
        assert snap["daemon"]["pid"] == pid2 and snap["daemon_alive"] is True
        assert snap["nights"][0]["window_start"] == window  # resumed, not rebuilt
        assert "resumed" in (var / "daemon.log").read_text()
    finally:
        assert cli("stop", "--state-dir", str(var)).returncode == 0
        wait_gone(pid2)


def test_corrupt_state_is_a_clear_error_and_kept_aside(tmp_path: Path, idle_plan: Path):
    var = tmp_path / "var"
    var.mkdir()
    (var / "state.json").write_text('{"schema_version": 1, "nights": [')
    assert cli("status", "--json", "--state-dir", str(var)).returncode == 1
    out = cli("start", "--plan", str(idle_plan), "--state-dir", str(var), "--foreground")
    assert out.returncode == 1
    assert "corrupt" in out.stderr and "kept aside" in out.stderr
    assert not (var / "state.json").exists()
    assert len(list(var.glob("state.json.corrupt-*"))) == 1


def test_newer_state_file_is_refused_and_left_in_place(tmp_path: Path, idle_plan: Path):
    var = tmp_path / "var"
    var.mkdir()
    (var / "state.json").write_text('{"schema_version": 99, "nights": []}')
    out = cli("start", "--plan", str(idle_plan), "--state-dir", str(var))
    assert out.returncode == 1 and "newer" in out.stderr
    assert (var / "state.json").exists()


def test_status_json_without_any_state_and_another_plan_refused(tmp_path, idle_plan):
    var = tmp_path / "var"
    assert status(var) == {**status(var), "nights": [], "plan": None, "daemon_alive": False}
    first = cli("start", "--plan", str(idle_plan), "--state-dir", str(var))
    pid = int(re.search(r"pid (\d+)", first.stdout).group(1))  # type: ignore[union-attr]
    assert cli("stop", "--state-dir", str(var)).returncode == 0
    wait_gone(pid)
    other = cli("start", "--plan", "demo", "--state-dir", str(var), "--foreground")
    assert other.returncode == 1 and "holds plan 'idle'" in other.stderr
    bad = cli("start", "--plan", "no-such-plan", "--state-dir", str(var))
    assert bad.returncode == 2 and "not found" in bad.stderr
