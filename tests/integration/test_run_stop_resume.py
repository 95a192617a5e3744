"""A real ``hjepa-night run`` stopped with SIGINT stores its night ``stopped`` (state file and
``status --json``), and the same command again resumes that night: same name, attempts kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workerutil import DEMO, TINY, env, events, repair_runbook, wait_for

pytestmark = pytest.mark.slow


def _night(state_dir: Path) -> dict:
    try:
        return json.loads((state_dir / "state.json").read_text())["nights"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return {}


def _stepping(state_dir: Path) -> bool:
    attempts = _night(state_dir).get("attempts") or []
    return bool(attempts) and bool(events(Path(attempts[-1]["run_dir"]), "step"))


def test_sigint_stores_the_night_stopped_and_the_same_run_resumes_it(tmp_path: Path) -> None:
    state_dir = tmp_path / "var"
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", "--config", str(DEMO),
           "--runbook", repair_runbook(tmp_path),
           "--window", "4m", "--state-dir", str(state_dir), "--no-tui"]  # fmt: skip
    for s in [*TINY, "training.epochs=1"]:
        cmd += ["--set", s]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert wait_for(lambda: _stepping(state_dir), timeout=240), "the worker never stepped"
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-2000:] + err[-3000:]
    assert "resumable" in out
    stopped = _night(state_dir)
    assert stopped["status"] == "stopped", stopped.get("reason")
    assert stopped["attempts"][-1]["exit_kind"] == "stopped"
    status = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "status", "--json", "--state-dir",
         str(state_dir)], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert json.loads(status.stdout)["nights"][0]["status"] == "stopped", status.stderr

    again = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True,
                           timeout=400)  # fmt: skip
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert f"resuming night {stopped['name']}" in again.stdout
    resumed = _night(state_dir)
    assert resumed["name"] == stopped["name"] and resumed["started_at"] == stopped["started_at"]
    assert resumed["status"] == "succeeded", resumed["reason"]
    first = stopped["attempts"][0]
    assert resumed["attempts"][0]["index"] == first["index"]
    assert resumed["attempts"][0]["run_dir"] == first["run_dir"]
    assert len(resumed["attempts"]) > len(stopped["attempts"])  # kept, then one more
