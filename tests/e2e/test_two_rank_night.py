"""``hjepa-night run`` on the aggressive demo recipe with two ranks (FPN + contrastive under
DDP on gloo), through the real CLI, supervisor, launcher and worker:

    python -m orchestrator.cli run --config configs/demo_aggressive.yaml \\
        --set distributed.nproc_per_node=2 --window 10m --no-tui ...

1. a night that gets a live epoch cut mid-run (written as the supervisor writes one) ends
   succeeded (judged on what the night owes: in its window, no NaN left, every feature still
   on), the loss falls, and every checkpoint's per-rank weight digests agree;
2. a night stopped mid-run (SIGINT to ``run``: the supervisor's control stop) ends with a stop
   checkpoint whose digests agree, and ``run`` says the night is resumable.

Sizes shrink (a smaller data set, evaluation and window); every feature switch is as shipped.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.workerutil import DEMO_AGGRESSIVE, ROOT, env, events, repair_runbook, wait_for
from trainer.events import Control, read_control, write_control

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SETS = [
    "distributed.nproc_per_node=2",
    "data.synthetic.num_train=512",  # 8 steps of 64 an epoch
    "data.synthetic.num_eval_train=256",
    "data.synthetic.num_eval_test=256",
    "evaluation.max_train_samples=256",
    "evaluation.max_test_samples=256",
    "evaluation.rank_samples=256",
    "training.epochs=4",
    "logging.log_frequency=1",
    "logging.heartbeat_s=1.0",
    "faults.check_gradients=true",
]
LIMIT_S = 600


def start_night(state_dir: Path, *extra: str, runbook: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", "--config", str(DEMO_AGGRESSIVE)]
    cmd += ["--window", "10m", "--state-dir", str(state_dir), "--no-tui"]
    cmd += ["--runbook", runbook] if runbook else []
    for s in [*SETS, *extra]:
        cmd += ["--set", s]
    state_dir.mkdir(parents=True, exist_ok=True)
    log = (state_dir / "run.log").open("ab")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def attempt_dir(state_dir: Path) -> Path | None:
    found = sorted((state_dir / "runs").glob("*/attempt-01"))
    return found[0] if found else None


def finish(proc: subprocess.Popen, state_dir: Path) -> int:
    try:
        return proc.wait(LIMIT_S)
    except subprocess.TimeoutExpired:
        import os

        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        log = (state_dir / "run.log").read_text()[-3000:]
        raise AssertionError(f"hjepa-night run hung (> {LIMIT_S} s); killed:\n{log}") from None


def digests_agree(run_dir: Path) -> list[dict]:
    saved = events(run_dir, "checkpoint")
    assert saved
    for e in saved:
        assert len(e["digests"]) == 2 and len(set(e["digests"])) == 1, e
    return saved


def test_two_ranks_with_a_live_cut_succeed_and_learn(tmp_path: Path) -> None:
    state_dir = tmp_path / "var"
    t0 = time.monotonic()
    proc = start_night(state_dir, "training.epochs=5", runbook=repair_runbook(tmp_path))
    assert wait_for(lambda: attempt_dir(state_dir) is not None, 120)
    run = attempt_dir(state_dir)
    assert run is not None
    assert wait_for(lambda: any(e["step"] >= 4 for e in events(run, "step")), 300)
    prev = read_control(run)  # the supervisor's numbering: the next seq
    write_control(run, Control(seq=(prev.seq if prev else 0) + 1, epochs=3))
    code = finish(proc, state_dir)
    print(f"two-rank night with a live cut: {time.monotonic() - t0:.0f} s")
    assert code == 0, (state_dir / "run.log").read_text()[-3000:]
    state = json.loads((state_dir / "state.json").read_text())
    night = state["nights"][0]
    assert night["status"] == "succeeded", night["reason"]
    (started,) = events(run, "started")
    assert started["world_size"] == 2 and started["features"]["fpn"].startswith("on")
    assert started["features"]["contrastive"].startswith("on")
    assert events(run, "control")[0]["applied"].startswith("epochs → 3")
    ends = events(run, "epoch_end")
    assert [e["epoch"] for e in ends] == [1, 2, 3] and {e["total_epochs"] for e in ends} == {3}
    assert ends[-1]["mean_loss"] < ends[0]["mean_loss"], ends  # it learns
    saved = digests_agree(run)
    assert saved[-1]["reason"] == "final"
    assert events(run, "finished")[-1]["reason"] == "completed"


def test_two_ranks_stopped_mid_run_agree_and_stay_resumable(tmp_path: Path) -> None:
    state_dir = tmp_path / "var"
    proc = start_night(state_dir, "faults.step_delay_s=0.1")
    assert wait_for(lambda: attempt_dir(state_dir) is not None, 120)
    run = attempt_dir(state_dir)
    assert run is not None
    assert wait_for(lambda: any(e["step"] >= 3 for e in events(run, "step")), 300)
    t_stop = time.monotonic()
    proc.send_signal(signal.SIGINT)  # `run`: the supervisor's control stop
    code = finish(proc, state_dir)
    assert code == 130, (state_dir / "run.log").read_text()[-3000:]
    assert time.monotonic() - t_stop < 120
    assert "resumable" in (state_dir / "run.log").read_text()
    saved = digests_agree(run)
    assert saved[-1]["reason"] == "stop"
    assert events(run, "finished")[-1]["reason"] == "stopped"
