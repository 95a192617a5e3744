"""One shared, interrupted run of the demo plan (real CLI, real detached daemon, real worker).

The session fixture ``demo_run`` drives the demo nights (the shipped demo configs, runbook and
injected faults; only the windows are widened so a loaded machine never cuts epochs) as a
user would, with the worst interruptions in the middle of night 1:

1. ``start`` (detached); wait until night 1 has checkpointed epoch 1 and trains epoch 2;
2. ``kill -9`` the daemon (its worker lives on, orphaned);
3. ``start`` again (takes the stale lock over) and at once a second ``start`` (refused);
4. wait until the new daemon re-attached to the live worker and that worker ended another
   epoch under it; ``stop`` (graceful);
5. ``start`` again and wait for the plan to finish.

It records what each step returned; ``test_demo_plan.py`` and ``test_crash_safety.py`` assert
on it. Every daemon and worker it saw is killed at the end if still alive.

The run is played once per test session, whichever test process asks first: that process
holds a lock on a file in the session's shared temporary folder while it plays the run, then
stores the record there (pickle); another process that needs it waits on the lock and reads
the record (or the failure) instead of playing a second run of several minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.workerutil import session_once
from trainer.events_read import read_events

ROOT = Path(__file__).resolve().parents[2]
FINISH_TIMEOUT_S = 2400


def cli(*args: str, timeout: float = 180, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_extra)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def snapshot(state_dir: Path) -> dict[str, Any]:
    out = cli("status", "--json", "--state-dir", str(state_dir))
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def wait_for(what: str, cond: Any, timeout: float, every: float = 3.0) -> Any:
    """Poll ``cond`` every ``every`` s (a status call is a Python start-up of about half a CPU
    second: polled each second, it took a core's time from the training it waits for)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def started_pid(out: subprocess.CompletedProcess[str]) -> int:
    assert out.returncode == 0, out.stdout + out.stderr
    match = re.search(r"pid (\d+)", out.stdout)
    assert match, out.stdout
    return int(match.group(1))


@dataclass
class DemoRun:
    state_dir: Path
    plan_file: Path
    wall_s: float = 0.0
    steps: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)


def _first_checkpoint_then_training(state_dir: Path) -> bool:
    """Night 1's first attempt checkpointed an epoch and trains the next one."""
    attempts = snapshot(state_dir)["nights"][0]["attempts"]
    events = read_events(Path(attempts[0]["run_dir"]) / "events.jsonl") if attempts else []
    ckpt = [i for i, e in enumerate(events) if e["type"] == "checkpoint" and e["epoch"] >= 1]
    return bool(ckpt) and any(e["type"] == "step" for e in events[ckpt[0] + 1 :])


def _epoch_ends(state_dir: Path) -> int:
    """How many epochs night 1's first attempt has ended."""
    attempts = snapshot(state_dir)["nights"][0]["attempts"]
    events = read_events(Path(attempts[0]["run_dir"]) / "events.jsonl") if attempts else []
    return sum(e["type"] == "epoch_end" for e in events)


def _reattached_and_training(state_dir: Path, epochs_at_kill: int) -> bool:
    """The new daemon recorded a re-attach to night 1's worker, which ended another epoch."""
    decisions = snapshot(state_dir)["nights"][0]["decisions"]
    return (
        any(d["kind"] == "reattached" for d in decisions)
        and _epoch_ends(state_dir) > epochs_at_kill
    )


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The one demo run of this session (see the module docstring)."""
    with session_once(tmp_path_factory, "demo-run.pickle") as record:
        if not record.exists():
            try:
                outcome: DemoRun | str = play_demo(tmp_path_factory.mktemp("demo"))
            except BaseException as exc:  # the other process must not play it again
                outcome = f"{type(exc).__name__}: {exc}"
                record.write_bytes(pickle.dumps(outcome))
                raise
            record.write_bytes(pickle.dumps(outcome))
        outcome = pickle.loads(record.read_bytes())
    if isinstance(outcome, str):
        pytest.fail(f"the shared demo run failed: {outcome}")
    return outcome


def play_demo(base: Path) -> DemoRun:
    plan = yaml.safe_load((ROOT / "configs/plans/demo.yaml").read_text())
    plan["name"] = "demo-e2e"
    for night in plan["nights"]:
        night["window"] = "60m"  # the work takes ~3 min a night; never cut epochs in a test
    plan_file = base / "demo-e2e.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    run = DemoRun(state_dir=base / "var", plan_file=plan_file)
    var, s = str(run.state_dir), run.steps
    t0 = time.monotonic()
    try:
        # as the README runs it: each night probes its features before its first attempt
        probe = {"HJEPA_FEATURE_PROBE": "1"}
        pid1 = started_pid(cli("start", "--plan", str(plan_file), "--state-dir", var, **probe))
        run.pids.add(pid1)
        wait_for("night 1 to train past its first checkpoint",
                 lambda: _first_checkpoint_then_training(run.state_dir), 900)  # fmt: skip
        s["tmux_screen"] = _status_screen_in_tmux(run.state_dir)
        worker = snapshot(run.state_dir)["nights"][0]["attempts"][0]["pid"]
        run.pids.add(worker)
        os.kill(pid1, signal.SIGKILL)
        wait_for("the killed daemon to vanish", lambda: not _alive(pid1), 30, 0.1)
        s["orphan_alive_after_kill"] = _alive(worker)
        s["after_kill"] = snapshot(run.state_dir)
        s["worker"] = worker
        s["epochs_at_kill"] = _epoch_ends(run.state_dir)
        s["killed_at"] = time.monotonic()

        pid2 = started_pid(cli("start", "--plan", str(plan_file), "--state-dir", var, **probe))
        run.pids.add(pid2)
        s["second_start"] = cli("start", "--plan", str(plan_file), "--state-dir", var)
        wait_for(
            "the new daemon to re-attach to the worker and train on",
            lambda: _reattached_and_training(run.state_dir, s["epochs_at_kill"]),
            900,
        )
        s["orphan_alive_after_restart"] = _alive(worker)
        s["after_reattach"] = snapshot(run.state_dir)
        s["reattach_s"] = time.monotonic() - s["killed_at"]  # kill → another epoch ended
        run.pids.update(a["pid"] for a in snapshot(run.state_dir)["nights"][0]["attempts"])
        s["stop"] = cli("stop", "--state-dir", var, "--timeout", "120")
        s["after_stop"] = snapshot(run.state_dir)
        s["workers_alive_after_stop"] = [
            a["pid"] for a in s["after_stop"]["nights"][0]["attempts"] if _alive(a["pid"])
        ]

        pid3 = started_pid(cli("start", "--plan", str(plan_file), "--state-dir", var, **probe))
        run.pids.add(pid3)
        wait_for("the plan to finish", lambda: not _alive(pid3), FINISH_TIMEOUT_S, 2.0)
        run.final = snapshot(run.state_dir)
        run.wall_s = time.monotonic() - t0
        return run
    finally:
        with contextlib.suppress(Exception):  # a broken state must not hide the failure
            nights = snapshot(run.state_dir)["nights"] if run.state_dir.exists() else []
            for night in nights:
                run.pids.update(a["pid"] for a in night["attempts"] if a.get("pid"))
        for pid in run.pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _status_screen_in_tmux(state_dir: Path) -> str | None:
    """`hjepa-night status` in a real terminal (tmux) during the live night: the screen text."""
    if shutil.which("tmux") is None:
        return None
    session = f"hjepa-e2e-{os.getpid()}"
    cmd = (
        f"env -u COLUMNS -u LINES PYTHONPATH={ROOT} {sys.executable} -m orchestrator.cli "
        f"status --state-dir {state_dir}"
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "50", cmd], check=True
    )
    try:
        screen = ""
        end = time.monotonic() + 30
        while time.monotonic() < end:  # until the live screen has drawn its numbers
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            if "img/s" in screen:
                break
            time.sleep(0.5)
        return screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
