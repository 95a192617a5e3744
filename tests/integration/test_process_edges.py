"""Process edges of the night runner and the daemon, with real processes: an attempt is in the
state file before its worker exists, a worker whose pid never reached the state is found and
never doubled, liveness always by pid + create time, orphans stopped as a whole process group,
one owner per state dir (``run`` too), and readers that never change files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from orchestrator.core.lock import DaemonLock
from orchestrator.core.state import Attempt, Night, StateStore, now_iso
from orchestrator.core.system import System, process_alive
from orchestrator.night.runner import NightRunner
from orchestrator.schedule.daemon import stop_orphan_workers
from tests.integration.test_night_faults import CONFIG, FAKE, night
from tests.workerutil import events, wait_for

pytestmark = pytest.mark.slow  # real processes


ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class RecordingSystem(System):
    """The real system; each spawn also notes what the state file said at that moment."""

    def __init__(self, store: StateStore) -> None:
        super().__init__()
        self.store = store
        self.seen_at_spawn: list[list[tuple[int, int | None]]] = []

    def spawn(self, argv: list[str], cwd: Any, log_path: Any, env: Any = None) -> int:
        on_disk = self.store.load().nights[0].attempts
        self.seen_at_spawn.append([(a.index, a.pid) for a in on_disk])
        return super().spawn(argv, cwd, log_path, env)


def test_an_attempt_is_in_the_state_file_before_its_worker_is_spawned(tmp_path: Path) -> None:
    store = night(tmp_path, {"training.epochs": 2, "faults.oom_above_micro_batch": 32})
    system = RecordingSystem(store)
    n = NightRunner(store, 0, threading.Event(), system, None, worker=FAKE).run()
    assert n.status == "succeeded", n.reason
    assert len(system.seen_at_spawn) == len(n.attempts) == 2
    for i, seen in enumerate(system.seen_at_spawn, start=1):
        assert seen[-1] == (i, None)  # recorded, pid not yet known
    assert all(a.pid and a.pid_create_time for a in n.attempts)


def _open_attempt(
    store: StateStore, pid: int | None = None, create_time: float | None = None
) -> Night:
    state = store.load()
    n = state.nights[0]
    run_dir = store.dir / "runs" / n.name / "attempt-01"
    n.attempts.append(
        Attempt(
            index=1,
            run_dir=str(run_dir),
            overrides=dict(n.overrides),
            started_at=now_iso(),
            pid=pid,
            pid_create_time=create_time,
        )
    )
    n.status = "running"
    store.save(state)
    return n


def test_a_worker_whose_pid_never_reached_the_state_is_found_not_doubled(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The runner died between recording the attempt and recording the worker's pid: the next
    runner finds that worker by its --run-dir and deals with it before launching another."""
    monkeypatch.setenv("FAKE_STEP_S", "0.3")
    store = night(tmp_path, {"training.epochs": 3})
    n = _open_attempt(store)
    run_dir = Path(n.attempts[0].run_dir)
    system = System()
    pid = system.spawn(
        [*FAKE, "--config", CONFIG, "--run-dir", str(run_dir), "--set", "training.epochs=3"],
        ROOT,
        run_dir / "worker.log",
    )
    assert wait_for(lambda: bool(events(run_dir, "step")), 60), "the worker never stepped"
    done = NightRunner(store, 0, threading.Event(), system, None, worker=FAKE).run()
    assert done.status == "succeeded", done.reason
    assert done.attempts[0].pid == pid  # adopted: its pid is now on record
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_an_attempt_that_never_spawned_is_closed_and_its_dir_not_reused(tmp_path: Path) -> None:
    store = night(tmp_path, {"training.epochs": 2})
    n = _open_attempt(store)
    stale = Path(n.attempts[0].run_dir)
    done = NightRunner(store, 0, threading.Event(), System(), None, worker=FAKE).run()
    assert done.status == "succeeded", done.reason
    first, second = done.attempts
    assert first.exit_kind == "stopped" and "never started" in (first.message or "")
    assert second.run_dir != first.run_dir and Path(second.run_dir).name == "attempt-02"
    assert not done.fallbacks  # not a fallback: nothing about the training changed
    assert not stale.exists() or not (stale / "events.jsonl").exists()


def test_liveness_needs_the_create_time() -> None:
    me = psutil.Process()
    assert process_alive(me.pid, me.create_time())
    assert not process_alive(me.pid, None)  # a pid alone may be a reused one
    assert not process_alive(me.pid, me.create_time() - 3600)
    assert not System().is_alive(me.pid, None)


CHILD = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {code!r}])  # prints its pid once it is set up
time.sleep(600)
"""
PLAIN = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"
DEAF = (
    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(os.getpid(), flush=True); time.sleep(600)"
)


@pytest.mark.parametrize("child_code", [PLAIN, DEAF], ids=["plain-child", "child-ignores-term"])
def test_orphans_are_stopped_as_a_whole_process_group(tmp_path: Path, child_code: str) -> None:
    """A worker left by a dead daemon, with a DataLoader-like child: both go, even a child that
    ignores SIGTERM and outlives its leader (it gets SIGKILL once the leader is gone)."""
    system = System()
    log = tmp_path / "worker.log"
    pid = system.spawn([sys.executable, "-c", CHILD.format(code=child_code)], tmp_path, log)
    for _ in range(100):
        if log.read_text().strip():
            break
        time.sleep(0.05)
    child = int(log.read_text().split()[0])
    n = Night(
        name="n",
        index=0,
        config="c",
        runbook="r",
        attempts=[
            Attempt(
                index=1, run_dir=str(tmp_path), pid=pid, pid_create_time=system.create_time(pid)
            )
        ],
    )
    assert stop_orphan_workers(n, grace_s=5.0, system=system) == [pid]
    for p in (pid, child):
        gone = not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE
        assert gone, f"pid {p} survived"


def test_run_refuses_a_state_dir_that_is_in_use(tmp_path: Path) -> None:
    var = tmp_path / "var"
    lock = DaemonLock(var)
    assert lock.acquire()
    try:
        out = cli(
            "run",
            "--config",
            str(ROOT / "configs/demo_conservative.yaml"),
            "--window",
            "2m",
            "--state-dir",
            str(var),
            "--no-tui",
        )
    finally:
        lock.release()
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"in use by hjepa-night pid {os.getpid()}" in out.stderr
    assert not (var / "state.json").exists()


@pytest.mark.parametrize(
    "args", [["status", "--json"], ["status", "--once"], ["report"], ["stop"]], ids=" ".join
)
def test_readers_never_move_a_corrupt_state_file(tmp_path: Path, args: list[str]) -> None:
    var = tmp_path / "var"
    var.mkdir()
    (var / "state.json").write_text('{"schema_version": 1, "nights": [')
    cli(*args, "--state-dir", str(var))
    assert (var / "state.json").read_text() == '{"schema_version": 1, "nights": ['
    assert not list(var.glob("state.json.corrupt-*"))
