"""``hjepa-night join`` at its edges: a SIGTERM while its launcher still waits for the
rendezvous ends both (nothing left reparented to init), and an ``experiment.name`` that would
place the node's folder outside the state dir is refused."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.cli import main
from tests.workerutil import DEMO, ROOT, env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_sigterm_before_the_ranks_exist_ends_join_and_its_launcher(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "orchestrator.cli", "join", "--config", str(DEMO)]
    cmd += ["--node-rank", "1", "--state-dir", str(tmp_path), "--set", "distributed.nnodes=2"]
    cmd += ["--set", f"distributed.rdzv_endpoint=localhost:{_free_port()}"]
    join = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
    launcher: list[psutil.Process] = []
    try:
        end = time.monotonic() + 60
        while not launcher and time.monotonic() < end:  # the launcher is up, in the rendezvous
            launcher = [
                c for c in psutil.Process(join.pid).children() if "trainer.launch" in c.cmdline()
            ]
            time.sleep(0.2)
        assert launcher, "join never started its launcher"
        time.sleep(4.0)  # into torch's rendezvous (its imports done, its handlers installed)
        join.send_signal(signal.SIGTERM)
        assert join.wait(30) == 128 + signal.SIGTERM
        _gone, alive = psutil.wait_procs(launcher, timeout=20)
        assert not alive, "the launcher outlived join"
    finally:
        for p in launcher:
            if p.is_running():
                p.kill()
        if join.poll() is None:
            join.kill()


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "..", "x\\\\y"])
def test_an_experiment_name_that_is_a_path_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    rc = main(["join", "--config", str(DEMO), "--node-rank", "1", "--state-dir", str(tmp_path),
               "--set", "distributed.nnodes=2", "--set", "distributed.rdzv_endpoint=localhost:1",
               "--set", f"experiment.name={name}"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "experiment.name" in err and "plain name" in err
    assert not list(tmp_path.rglob("node-1")) and not (tmp_path.parent / "escape").exists()
