"""The supervisor's state machine against a recording fake of the system seam.

The worker is simulated by appending real protocol events to events.jsonl and by scripting
what ``poll`` returns; the clock only moves when the test moves it.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.runbook import load_runbook
from orchestrator.core.system import MemSample, System
from orchestrator.night.supervisor import SAMPLES_FILE, Stage, Supervisor
from orchestrator.policy import ConfigFacts, NightHistory, decide
from trainer.events import read_control

ROOT = Path(__file__).resolve().parents[2]
RB = load_runbook(ROOT / "runbooks/demo.yaml")  # grace 5 s, samples 2 s
RB.progress.step_timeout_s = 20.0  # timeouts these tests are written against
RB.progress.startup_timeout_s = RB.progress.slow_phase_timeout_s = 60.0
T0 = 1_000_000.0


class FakeSystem(System):
    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0
        self.calls: list[tuple[Any, ...]] = []
        self.exit: int | None = None
        self.rss = 500 * 1024**2

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return T0 + self.t + self.wall_jump

    wall_jump = 0.0  # an NTP step or a laptop's sleep: the wall clock moves, monotonic does not

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def spawn(self, argv: list[str], cwd: Any, log_path: Any, env: Any = None) -> int:
        self.calls.append(("spawn", argv))
        Path(log_path).write_text("")
        return 4242

    def poll(self, pid: int) -> tuple[bool, int | None]:
        return (self.exit is not None), self.exit

    def signal_group(self, pid: int, sig: int) -> None:
        self.calls.append(("signal", pid, sig))

    def kill_group_leftovers(self, pid: int) -> None:
        self.calls.append(("reap", pid))

    def sample(self, pid: int) -> MemSample:
        self.calls.append(("sample", pid))
        return MemSample(self.wall(), self.rss, self.rss + 1, 8 * 1024**3, 0, None)

    oom_kills = 0  # the kernel's OOM-kill count the test scripts

    def oom_kill_counts(self, pid: int) -> dict[str, int]:
        return {"memory.events": self.oom_kills}

    def signals(self) -> list[int]:
        return [c[2] for c in self.calls if c[0] == "signal"]

    # liveness and groups, for the blocking escalation (System.stop_group)
    alive_until = -1.0  # the leader is alive while t < this
    leftover_until = -1.0  # a group member outlives the leader until this (or SIGKILL)

    def is_alive(self, pid: int, create_time: float | None) -> bool:
        return create_time is not None and self.t < self.alive_until

    def group_members(self, pgid: int) -> list[int]:
        return [pgid + 1] if self.t < self.leftover_until else []


def emit(run_dir: Path, fs: FakeSystem, **ev: Any) -> None:
    ev.setdefault("ts", fs.wall())
    with (run_dir / "events.jsonl").open("a") as fh:
        fh.write(json.dumps(ev) + "\n")


def history() -> NightHistory:
    facts = ConfigFacts(micro_batch=64, accum_steps=1, lr=1e-3, epochs=6, eval_frequency=2)
    return NightHistory(
        attempts=1, attempts_without_progress=0, config=facts, base_effective_batch=64
    )


def make(
    tmp_path: Path, deadline: float = T0 + 3600, rb: Any = RB, stop: threading.Event | None = None
) -> tuple[Supervisor, FakeSystem, list[Any]]:
    fs = FakeSystem()
    decisions: list[Any] = []
    sup = Supervisor(
        fs,
        rb,
        run_dir=tmp_path,
        argv=["worker"],
        cwd=tmp_path,
        deadline=deadline,
        decide=lambda obs: decide(obs, history(), rb, fs.wall(), deadline),
        on_decision=decisions.append,
        stop=stop,
    )
    sup.launch()
    emit(tmp_path, fs, type="started", pid=4242, epochs=6, start_epoch=1, start_step=0)
    return sup, fs, decisions


def run_for(sup: Supervisor, fs: FakeSystem, seconds: float, step: float = 0.5) -> Any:
    end = fs.t + seconds
    while fs.t < end:
        out = sup.tick()
        if out is not None:
            return out
        fs.sleep(step)
    return None


def test_hang_escalates_term_then_kill_to_the_group(tmp_path: Path) -> None:
    sup, fs, decisions = make(tmp_path)
    emit(
        tmp_path,
        fs,
        type="heartbeat",
        phase="train",
        epoch=1,
        step=3,
        progress_age_s=0.0,
        step_s=1.0,
    )
    assert run_for(sup, fs, 19.0) is None and fs.signals() == []
    run_for(sup, fs, 2.0)
    assert fs.signals() == [signal.SIGTERM] and sup.state is Stage.TERMINATING
    assert decisions[-1].trigger == "hang"
    run_for(sup, fs, 5.5)  # it ignores SIGTERM: SIGKILL after term_grace_s
    assert fs.signals() == [signal.SIGTERM, signal.SIGKILL]
    fs.exit = -9
    out = run_for(sup, fs, 1.0)
    assert out.exit_kind == "hang" and ("reap", 4242) in fs.calls


def test_heartbeats_without_progress_count_as_silence(tmp_path: Path) -> None:
    sup, fs, _ = make(tmp_path)
    for _ in range(12):  # the heartbeat thread beats, but the loop made no progress for 22 s
        emit(tmp_path, fs, type="heartbeat", phase="train", progress_age_s=fs.t, step_s=1.0)
        run_for(sup, fs, 2.0)
    assert signal.SIGTERM in fs.signals()


def test_deadline_asks_for_checkpoint_eval_and_stop(tmp_path: Path) -> None:
    sup, fs, decisions = make(tmp_path, deadline=T0 + 40)  # final eval reserve 30 s
    emit(tmp_path, fs, type="heartbeat", phase="train", progress_age_s=0.0)
    run_for(sup, fs, 11.0)
    ctl = read_control(tmp_path)
    assert ctl is not None and ctl.stop and ctl.final_eval
    assert decisions[-1].kind.value == "stop_for_deadline" and sup.state is Stage.STOPPING
    emit(tmp_path, fs, type="finished", reason="stopped", epoch=1, step=5)
    fs.exit = 3
    out = run_for(sup, fs, 1.0)
    assert (out.exit_kind, out.stop_reason) == ("stopped", "deadline")
    assert fs.signals() == []


def test_daemon_stop_not_honoured_escalates(tmp_path: Path) -> None:
    stop = threading.Event()
    sup, fs, _ = make(tmp_path, stop=stop)
    stop.set()
    for _ in range(70):  # heartbeats keep coming (eval phase), but no exit within 60 s
        emit(tmp_path, fs, type="heartbeat", phase="eval", progress_age_s=0.0)
        run_for(sup, fs, 1.0)
    assert read_control(tmp_path).stop
    assert fs.signals()[:1] == [signal.SIGTERM]


def test_memory_samples_are_appended(tmp_path: Path) -> None:
    sup, fs, _ = make(tmp_path)
    emit(tmp_path, fs, type="heartbeat", phase="train", progress_age_s=0.0)
    run_for(sup, fs, 5.0)
    lines = [json.loads(x) for x in (tmp_path / SAMPLES_FILE).read_text().splitlines()]
    assert len(lines) == 3  # t = 0, 2, 4
    assert set(lines[0]) == {
        "ts",
        "worker_rss",
        "tree_rss",
        "sys_available",
        "swap_used",
        "gpu_used",
        "tree_mem",
        "tree_measure",
        "gpu_total",
        "gpu_whole_card",
        "sys_total",
    }


def test_memory_over_ceiling_stops_gracefully_then_classifies_memory(tmp_path: Path) -> None:
    sup, fs, decisions = make(tmp_path)
    fs.rss = 5 * 1024**3  # demo ceiling 4 GB
    emit(tmp_path, fs, type="heartbeat", phase="train", progress_age_s=0.0)
    run_for(sup, fs, 1.0)
    assert decisions[-1].trigger == "memory" and read_control(tmp_path).stop
    fs.exit = 3
    out = run_for(sup, fs, 1.0)
    assert out.exit_kind == "memory"


GiB = 1024**3
KILL_CASES = [
    # (name, worker tree RSS, device reading {reserved, total}, kernel OOM kills, exit kind)
    ("far below the ceilings", 500 * 1024**2, None, 0, "killed"),
    ("tree near the 4 GB host ceiling", int(3.8 * GiB), None, 0, "oom"),
    ("device near its ceiling", 500 * 1024**2, (7 * GiB, 8 * GiB), 0, "oom"),
    ("device far below its ceiling", 500 * 1024**2, (2 * GiB, 8 * GiB), 0, "killed"),
    ("the kernel counted an OOM kill", 500 * 1024**2, None, 1, "oom"),
]


@pytest.mark.parametrize(
    ("name", "rss", "device", "kernel", "kind"), KILL_CASES, ids=[c[0] for c in KILL_CASES]
)
def test_a_sigkill_is_judged_on_the_samples_before_it_and_the_kernel_count(
    tmp_path: Path, name: str, rss: int, device: tuple[int, int] | None, kernel: int, kind: str
) -> None:
    sup, fs, decisions = make(tmp_path)
    fs.rss = rss
    mem = {"reserved": device[0], "total": device[1]} if device else {}
    emit(tmp_path, fs, type="heartbeat", phase="train", progress_age_s=0.0, device_mem=mem)
    run_for(sup, fs, 0.6)
    fs.rss = 0  # the kill frees everything: only the samples before it tell
    fs.oom_kills += kernel
    fs.exit = -9
    out = run_for(sup, fs, 1.0)
    assert out.exit_kind == kind, out.message
    assert not [d for d in decisions if d.trigger == "memory"]  # never tripped live
    if kind == "killed":
        assert "OOM" not in out.message


def test_slow_epochs_are_cut_live_through_the_control_file(tmp_path: Path) -> None:
    sup, fs, decisions = make(tmp_path, deadline=T0 + 600)
    emit(tmp_path, fs, type="epoch_end", epoch=1, seconds=150.0, steps=10, total_epochs=6)
    run_for(sup, fs, 1.0)
    ctl = read_control(tmp_path)
    # 600 s − 30 s reserve from t=0 at 150 s/epoch: 1 done + 3 → the 4 rung of [5, 4, 3, 2]
    assert ctl is not None and ctl.epochs == 4 and not ctl.stop
    assert decisions[-1].kind.value == "set_epochs" and sup.view.total_epochs == 4


def test_a_wall_clock_jump_is_not_a_hang(tmp_path: Path) -> None:
    """Silence is measured on the monotonic clock (the events' ``mono``), not on wall time."""
    sup, fs, decisions = make(tmp_path)
    for i in range(1, 6):
        emit(tmp_path, fs, type="step", epoch=1, step=i, mono=fs.t, step_s=2.0)
        run_for(sup, fs, 2.0)
    fs.wall_jump = 900.0  # the wall clock leaps 15 minutes ahead; events keep their old ts
    for i in range(6, 12):
        emit(
            tmp_path, fs, type="step", epoch=1, step=i, mono=fs.t, step_s=2.0, ts=T0 + fs.t - 900.0
        )
        run_for(sup, fs, 2.0)
    assert fs.signals() == [] and not [d for d in decisions if d.trigger == "hang"]


def test_slow_steps_stretch_the_step_timeout_but_a_stall_is_caught(tmp_path: Path) -> None:
    """Every step takes 30 s (1.5x the 20 s step timeout): slow, not hung. A stall longer than
    5 recent steps (150 s) is still a hang."""
    sup, fs, decisions = make(tmp_path)
    for i in range(1, 5):
        emit(tmp_path, fs, type="step", epoch=1, step=i, mono=fs.t, step_s=30.0)
        assert run_for(sup, fs, 30.0) is None
    assert fs.signals() == []
    run_for(sup, fs, 110.0)  # 140 s without progress: under 5 x 30 s
    assert fs.signals() == []
    run_for(sup, fs, 15.0)
    assert fs.signals() == [signal.SIGTERM]
    hang = [d for d in decisions if d.trigger == "hang"][-1]
    assert hang.evidence["timeout_s"] == 150.0 and hang.evidence["recent_step_s"] == 30.0


def test_a_data_stall_gets_the_step_timeout(tmp_path: Path) -> None:
    sup, fs, decisions = make(tmp_path)
    emit(tmp_path, fs, type="step", epoch=1, step=1, mono=fs.t, step_s=1.0)
    for _ in range(12):  # waiting for a batch mid-epoch; the heartbeat thread keeps beating
        emit(tmp_path, fs, type="heartbeat", phase="data", mono=fs.t, progress_age_s=fs.t)
        run_for(sup, fs, 2.0)
    assert signal.SIGTERM in fs.signals()
    assert [d for d in decisions if d.trigger == "hang"][-1].evidence["phase"] == "data"


def test_the_first_step_gets_the_start_up_timeout(tmp_path: Path) -> None:
    """Before any step has finished (warm-up, a first-step compile) a long silence is not a
    hang until the start-up timeout."""
    sup, fs, _ = make(tmp_path)
    emit(
        tmp_path,
        fs,
        type="heartbeat",
        phase="train",
        epoch=1,
        step=0,
        mono=fs.t,
        progress_age_s=0.0,
    )
    assert run_for(sup, fs, 50.0) is None and fs.signals() == []
    run_for(sup, fs, 15.0)
    assert fs.signals() == [signal.SIGTERM]


def test_the_blocking_escalation_waits_terms_kills_and_empties_the_group() -> None:
    """The schedule crash recovery and the daemon run: a graceful wait, SIGTERM, SIGKILL (all to
    the group), then a leaderless group's leftovers get SIGKILL too."""
    fs = FakeSystem()
    fs.alive_until = 1e9  # a leader that ignores everything but SIGKILL

    def kill_group(pid: int, sig: int) -> None:
        fs.calls.append(("signal", pid, sig))
        if sig == signal.SIGKILL:
            fs.alive_until = fs.t

    fs.signal_group = kill_group  # type: ignore[method-assign]
    assert fs.stop_group(4242, 1.0, (30.0, 5.0, 10.0))
    assert fs.signals() == [signal.SIGTERM, signal.SIGKILL]
    assert 35.0 <= fs.t < 36.0  # 30 s for the graceful stop, 5 s of SIGTERM grace

    fs = FakeSystem()
    fs.alive_until, fs.leftover_until = 3.0, 1e9  # the leader goes on SIGTERM, a child stays
    assert fs.stop_group(4242, 1.0, (0.0, 5.0, 10.0), leftover_grace_s=2.0)
    assert fs.signals() == [signal.SIGTERM] and ("reap", 4242) in fs.calls
    fs = FakeSystem()
    fs.alive_until = -1.0  # already gone: nothing is signalled
    assert fs.stop_group(4242, 1.0, (30.0, 5.0, 10.0)) and fs.calls == []
