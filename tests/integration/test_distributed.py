"""Several ranks for real: the launcher (PyTorch's elastic agent) starting two gloo ranks of the
worker on this CPU, one writer, agreed stops and cuts, exact resume, a world-size change, an
OOM on one rank, a dead rank inside a supervised night, and two "nodes" on localhost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import yaml

from orchestrator.core.state import StateStore
from orchestrator.night.run_cmd import new_single_night
from orchestrator.night.runner import run_night
from tests.workerutil import (
    DEMO,
    ROOT,
    TINY,
    env,
    events,
    repair_runbook,
    run_worker,
    wait_for,
)
from trainer.checkpoint import store as ck
from trainer.events import EXIT_OK, EXIT_OOM, EXIT_STOPPED, Control, write_control

pytestmark = pytest.mark.slow
TWO = ["--standalone", "--nproc-per-node", "2"]


def launch_cmd(run_dir: Path, sets: list[str], launch: list[str] = TWO, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "trainer.launch", *launch, "-m", "trainer"]
    cmd += ["--config", str(DEMO), "--run-dir", str(run_dir)]
    for s in TINY + sets:
        cmd += ["--set", s]
    return cmd + list(extra)


def start(run_dir: Path, sets: list[str], launch: list[str] = TWO, *extra: str) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = (run_dir.parent / f"{run_dir.name}.log").open("ab")
    return subprocess.Popen(
        launch_cmd(run_dir, sets, launch, *extra),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env(),
        cwd=ROOT,
        start_new_session=True,  # its own group, as the supervisor starts it
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    code = proc.wait(timeout)
    assert wait_for(lambda: not group_alive(proc.pid), 20), "ranks outlived their launcher"
    return code


def group_alive(pgid: int) -> list[int]:
    alive = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                alive.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive


def losses(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events(run_dir, "step")}


def test_two_ranks_write_once_stop_together_and_resume_exactly(tmp_path: Path) -> None:
    full, cut, one = tmp_path / "full", tmp_path / "cut", tmp_path / "one"
    sets = ["training.epochs=3"]
    assert finish(start(full, sets)) == EXIT_OK
    (started,) = events(full, "started")
    # the recipe's batch (16) shared by two ranks: the steps of one process
    assert started["world_size"] == 2 and started["micro_batch"] == 8
    assert started["global_batch"] == 16 and started["steps_per_epoch"] == 16
    assert len(events(full, "finished")) == 1 and not events(full, "fatal")
    assert [e["epoch"] for e in events(full, "eval")] == [0, 1, 2, 3]
    assert len(ck.list_checkpoints(full / "checkpoints")) == 3

    # SIGTERM to the launcher alone: it passes it on; both ranks stop at the same step
    proc = start(cut, [*sets, "faults.step_delay_s=0.3"])
    assert wait_for(lambda: any(e["step"] >= 10 for e in events(cut, "step")), 180)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, 120) == EXIT_STOPPED
    stop = events(cut, "checkpoint")[-1]
    assert stop["reason"] == "stop" and 10 <= stop["step"] < 48
    assert events(cut, "finished")[-1]["reason"] == "stopped"

    # same world size: exactly the uninterrupted run
    resumed_run = tmp_path / "again"
    assert finish(start(resumed_run, sets, TWO, "--resume", stop["path"])) == EXIT_OK
    ref, got = losses(full), losses(resumed_run)
    assert min(got) == stop["step"] + 1 and max(got) == max(ref) == 48
    for step, loss in got.items():
        assert loss == pytest.approx(ref[step], abs=1e-5), step

    # one process from the two-rank checkpoint: same position, same global batch
    r = run_worker(one, sets, "--resume", stop["path"])
    assert r.returncode == EXIT_OK, r.stderr
    (res,) = events(one, "resumed")
    assert res["step"] == stop["step"] and (res["world_size"], res["from_world_size"]) == (1, 2)
    at = ck.read_sidecar(Path(stop["path"]))["samples_in_epoch"]
    assert res["samples_in_epoch"] == (at if at + 16 <= 256 else 0)  # the same sample position
    (s1,) = events(one, "started")
    assert (s1["micro_batch"], s1["accum_steps"], s1["global_batch"]) == (16, 1, 16)
    assert min(losses(one)) == stop["step"] + 1 and max(losses(one)) == 48


def test_a_control_cut_reaches_every_rank_at_the_same_step(tmp_path: Path) -> None:
    proc = start(tmp_path / "run", ["training.epochs=4", "faults.step_delay_s=0.2"])
    run = tmp_path / "run"
    assert wait_for(lambda: any(e["step"] >= 3 for e in events(run, "step")), 180)
    write_control(run, Control(seq=1, epochs=2))
    assert finish(proc) == EXIT_OK  # a rank left on 4 epochs would hang the other
    assert {e["total_epochs"] for e in events(run, "epoch_end")} == {2}
    assert events(run, "control")[0]["applied"].startswith("epochs → 2")


def test_an_oom_on_one_rank_is_the_groups_oom(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start(run, ["faults.oom_at_step=3", "faults.oom_rank=1"])
    assert finish(proc) == EXIT_OOM
    fatal = events(run, "fatal")[0]  # rank 1's own, before rank 0 loses its peer
    assert fatal["kind"] == "oom" and fatal["rank"] == 1
    log = (tmp_path / "run.log").read_text()
    assert "rank 1 failed first (exit 10)" in log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_train_to_the_end(tmp_path: Path) -> None:
    port = _free_port()

    def node(rank: int) -> list[str]:
        return [
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--node-rank",
            str(rank),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            "hjepa-test",
        ]

    # node 1 first: c10d numbers ranks by (host, pid), so its process is likely global rank 0;
    # the writer is still node 0's rank
    n1 = start(tmp_path / "node1", ["training.epochs=2"], node(1))
    time.sleep(1.0)
    n0 = start(tmp_path / "node0", ["training.epochs=2"], node(0))
    assert finish(n0) == EXIT_OK and finish(n1) == EXIT_OK
    (started,) = events(tmp_path / "node0", "started")
    assert started["world_size"] == 2 and started["global_batch"] == 16
    assert events(tmp_path / "node0", "finished")[0]["reason"] == "completed"
    assert not events(tmp_path / "node1")  # one writer
    assert len(ck.list_checkpoints(tmp_path / "node0" / "checkpoints")) == 2


def test_a_dead_rank_and_an_oom_on_rank_1_inside_a_night(tmp_path: Path) -> None:
    """Faults in sequence on two ranks: rank 1 runs out of memory (both ranks shrink, the
    global batch stays), then rank 1 is SIGKILLed with memory far below every ceiling (the
    group goes down, the night restarts from a checkpoint with the same micro-batch: a kill is
    not an OOM without memory evidence); the night still succeeds and no rank outlives its
    attempt."""
    tiny = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in TINY)}
    overrides = {
        **tiny,
        "training.epochs": 3,
        "data.batch_size": 32,  # the demo ladder's next rung is 16 (then checkpointing)
        "distributed.nproc_per_node": 2,
        "faults.oom_at_step": 10,  # after epoch 1's checkpoint (8 steps an epoch)
        "faults.oom_rank": 1,
        "faults.sigkill_rank": 1,
        "faults.sigkill_at_step": 20,  # after epoch 2's
        "logging.heartbeat_s": 1.0,
    }
    store = StateStore(tmp_path / "var")
    rb = repair_runbook(tmp_path)
    store.save(new_single_night(str(DEMO), rb, timedelta(minutes=15), overrides))
    n = run_night(store, 0)
    kinds = [a.exit_kind for a in n.attempts]
    assert kinds[:2] == ["oom", "killed"] and kinds[-1] == "finished", (kinds, n.reason)
    starts = [events(Path(a.run_dir), "started")[0] for a in n.attempts]
    assert [s["world_size"] for s in starts] == [2, 2, 2]
    assert [s["global_batch"] for s in starts] == [32, 32, 32]
    # the OOM rung halved data.batch_size: every rank's micro-batch halved, accumulation doubled
    assert (starts[0]["micro_batch"], starts[0]["accum_steps"]) == (16, 1)
    assert (starts[1]["micro_batch"], starts[1]["accum_steps"]) == (8, 2)
    # the kill: resumed as it was, the same micro-batch, no OOM rung, and no word of OOM
    assert (starts[2]["micro_batch"], starts[2]["accum_steps"]) == (8, 2)
    assert starts[2]["features"]["gradient_checkpointing"] == "off"
    after_kill = [d for d in n.decisions if d.evidence.get("after_attempt") == 2]
    assert [d.trigger for d in after_kill] == ["killed"], after_kill
    assert "oom" not in after_kill[0].action.lower(), after_kill[0].action
    assert "OOM" not in (n.attempts[1].message or "")
    assert [f.trigger for f in n.fallbacks].count("oom") == 1
    assert starts[1]["resumed_from"] and starts[2]["resumed_from"]
    assert n.status == "succeeded", n.reason
    for a in n.attempts:
        assert a.pid is not None and not group_alive(a.pid)


def test_a_supervised_night_across_two_nodes_with_join(tmp_path: Path) -> None:
    """Node 0: a night under the supervisor; node 1: ``hjepa-night join`` with the same config."""
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [
        "distributed.nnodes=2",
        f"distributed.rdzv_endpoint={endpoint}",
        "training.epochs=2",
    ]
    join = [sys.executable, "-m", "orchestrator.cli", "join", "--config", str(DEMO)]
    join += ["--node-rank", "1", "--state-dir", str(tmp_path / "node1"), "--once"]
    for s in TINY + nodes:
        join += ["--set", s]
    joined = subprocess.Popen(join, cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in TINY + nodes)}
    store = StateStore(tmp_path / "var")
    rb = str(ROOT / "runbooks/demo.yaml")
    store.save(new_single_night(str(DEMO), rb, timedelta(minutes=10), overrides))
    n = run_night(store, 0)
    assert joined.wait(120) == EXIT_OK
    assert n.attempts[-1].exit_kind == "finished" and len(n.attempts) == 1, n.reason
    started = events(Path(n.attempts[0].run_dir), "started")[0]
    assert started["world_size"] == 2 and started["global_batch"] == 16
    logs = list((tmp_path / "node1" / "runs").glob("join-*/node-1/attempt-01/worker.log"))
    assert logs and not events(logs[0].parent)  # node 1 trained, node 0 wrote


def test_a_hung_rank_brings_the_group_down_and_the_night_resumes(tmp_path: Path) -> None:
    """Rank 1 stops progressing: rank 0 waits in the all-reduce, its heartbeat says the main
    loop is stuck, the supervisor kills the group and the night resumes from a checkpoint."""
    tiny = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in TINY)}
    overrides = {
        **tiny,
        "training.epochs": 2,
        "data.batch_size": 32,
        "distributed.nproc_per_node": 2,
        "faults.hang_at_step": 10,  # after epoch 1's checkpoint (8 steps an epoch)
        "faults.hang_rank": 1,
        "logging.heartbeat_s": 1.0,
    }
    raw = yaml.safe_load((ROOT / "runbooks/demo.yaml").read_text())
    raw["progress"].update(step_timeout_s=8, term_grace_s=3)
    rb = tmp_path / "runbook.yaml"
    rb.write_text(yaml.safe_dump(raw))
    store = StateStore(tmp_path / "var")
    store.save(new_single_night(str(DEMO), str(rb), timedelta(minutes=10), overrides))
    n = run_night(store, 0)
    assert [a.exit_kind for a in n.attempts] == ["hang", "finished"], n.reason
    assert n.attempts[1].resume_from is not None
    for a in n.attempts:
        assert a.pid is not None and not group_alive(a.pid)


def test_a_new_supervisor_reattaches_to_two_live_ranks(tmp_path: Path) -> None:
    """The supervisor died while two ranks trained: the next one finds the launcher by its run
    dir, re-attaches (same pid, same attempt) and reads the ending from the writer's events."""
    from orchestrator.core.launcher import worker_command
    from orchestrator.core.state import Attempt, now_iso
    from orchestrator.core.system import System
    from trainer.config import DistributedConfig

    sets = [*TINY, "training.epochs=3", "distributed.nproc_per_node=2"]
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in sets)}
    store = StateStore(tmp_path / "var")
    rb = repair_runbook(tmp_path)
    store.save(new_single_night(str(DEMO), rb, timedelta(minutes=10), overrides))
    state = store.load()
    n = state.nights[0]
    run_dir = store.dir / "runs" / n.name / "attempt-01"
    system = System()
    argv = worker_command(DistributedConfig(nproc_per_node=2), "hjepa-test")
    argv += ["--config", str(DEMO), "--run-dir", str(run_dir)]
    for item in sets:
        argv += ["--set", item]
    pid = system.spawn(argv, ROOT, run_dir / "worker.log", env={"PYTHONPATH": str(ROOT)})
    n.attempts.append(
        Attempt(
            index=1,
            run_dir=str(run_dir),
            overrides=dict(n.overrides),
            started_at=now_iso(),
            pid=pid,
            pid_create_time=system.create_time(pid),
        )
    )
    n.status = "running"
    store.save(state)
    assert wait_for(lambda: bool(events(run_dir, "epoch_end")), 180)
    n = run_night(store, 0)
    assert n.status == "succeeded", n.reason
    assert len(n.attempts) == 1 and n.attempts[0].pid == pid
    assert (n.attempts[0].exit_kind, n.attempts[0].exit_code) == ("finished", 0)
    assert len(events(run_dir, "started")) == 1  # never restarted
    assert [d.kind for d in n.decisions].count("reattached") == 1
    assert not group_alive(pid)
