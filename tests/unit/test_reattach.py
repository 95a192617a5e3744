"""Re-attaching to a worker left running by a dead supervisor, and the memory measure the
policy sees: the supervisor against a scripted system seam, ``orphan_health`` directly."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.runbook import load_runbook
from orchestrator.core.system import MemSample, System
from orchestrator.night.history import orphan_health
from orchestrator.night.supervisor import Supervisor
from orchestrator.policy import ConfigFacts, NightHistory, decide

ROOT = Path(__file__).resolve().parents[2]
RB = load_runbook(ROOT / "runbooks/demo.yaml")
GB = 1024**3
T0 = 1_000_000.0


class Foreign(System):
    """A worker we did not start: ``poll`` must not be used; liveness by pid + create time."""

    def __init__(self, tree_rss: int = GB, tree_mem: int | None = GB) -> None:
        super().__init__()
        self.t, self.alive, self.signals = 0.0, True, []  # type: ignore[var-annotated]
        self.tree_rss, self.tree_mem = tree_rss, tree_mem
        self.alive_calls: list[tuple[int, float | None]] = []

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return T0 + self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def poll(self, pid: int) -> tuple[bool, int | None]:
        raise AssertionError("an attached worker is not our child: poll() must not be used")

    def is_alive(self, pid: int, create_time: float | None) -> bool:
        self.alive_calls.append((pid, create_time))
        return self.alive

    def signal_group(self, pid: int, sig: int) -> None:
        self.signals.append(sig)

    def kill_group_leftovers(self, pid: int) -> None:
        pass

    def sample(self, pid: int) -> MemSample:
        return MemSample(
            self.wall(),
            self.tree_rss,
            self.tree_rss,
            8 * GB,
            0,
            None,
            tree_mem=self.tree_mem,
            tree_measure="pss",
        )


def emit(run_dir: Path, fs: Foreign, **ev: Any) -> None:
    ev.setdefault("ts", fs.wall())
    with (run_dir / "events.jsonl").open("a") as fh:
        fh.write(json.dumps(ev) + "\n")


def history() -> NightHistory:
    facts = ConfigFacts(micro_batch=64, accum_steps=1, lr=1e-3, epochs=6, eval_frequency=2)
    return NightHistory(
        attempts=1, attempts_without_progress=0, config=facts, base_effective_batch=64
    )


def attached(
    tmp_path: Path, fs: Foreign, stop: threading.Event | None = None
) -> tuple[Supervisor, list[Any]]:
    decisions: list[Any] = []
    deadline = T0 + 3600
    sup = Supervisor(
        fs,
        RB,
        run_dir=tmp_path,
        argv=[],
        cwd=tmp_path,
        deadline=deadline,
        decide=lambda obs: decide(obs, history(), RB, fs.wall(), deadline),
        on_decision=decisions.append,
        stop=stop,
    )
    emit(tmp_path, fs, type="started", pid=77, epochs=6, start_epoch=1, start_step=0)
    emit(tmp_path, fs, type="step", epoch=1, step=1, step_s=1.0)
    sup.attach(77, 123.5)
    return sup, decisions


def run_for(sup: Supervisor, fs: Foreign, seconds: float) -> Any:
    end = fs.t + seconds
    while fs.t < end:
        out = sup.tick()
        if out is not None:
            return out
        fs.sleep(0.5)
    return None


@pytest.mark.parametrize(
    ("last", "code", "kind"),
    [
        ({"type": "finished", "reason": "completed"}, 0, "finished"),
        ({"type": "finished", "reason": "stopped"}, 3, "stopped"),
        ({"type": "fatal", "kind": "nonfinite", "message": "loss is nan"}, 11, "nonfinite"),
        ({"type": "fatal", "kind": "oom", "message": "CUDA out of memory"}, 10, "oom"),
        (None, None, "crash"),
    ],
)
def test_an_attached_worker_s_exit_is_read_from_its_events(
    tmp_path: Path, last: dict[str, Any] | None, code: int | None, kind: str
) -> None:
    fs = Foreign()
    sup, _ = attached(tmp_path, fs)
    assert run_for(sup, fs, 3.0) is None
    assert sup.view.step == 1 and sup.view.started is not None  # tailed from the start
    if last is not None:
        emit(tmp_path, fs, **last)
    fs.alive = False
    out = run_for(sup, fs, 1.0)
    assert (out.exit_code, out.exit_kind) == (code, kind)
    assert fs.alive_calls and all(c == (77, 123.5) for c in fs.alive_calls)


def test_an_attached_hung_worker_is_killed_and_ends_as_hang(tmp_path: Path) -> None:
    fs = Foreign()
    sup, decisions = attached(tmp_path, fs)
    run_for(sup, fs, RB.progress.step_timeout_s + 2)  # no progress after step 1
    assert fs.signals[:1] == [signal.SIGTERM] and decisions[-1].trigger == "hang"
    run_for(sup, fs, RB.progress.term_grace_s + 1)
    assert fs.signals == [signal.SIGTERM, signal.SIGKILL]
    fs.alive = False
    out = run_for(sup, fs, 1.0)
    assert out.exit_kind == "hang" and out.exit_code == -signal.SIGKILL


def test_a_daemon_stop_reaches_an_attached_worker_through_the_control_file(tmp_path: Path) -> None:
    fs, stop = Foreign(), threading.Event()
    sup, _ = attached(tmp_path, fs, stop)
    stop.set()
    run_for(sup, fs, 1.0)
    ctl = json.loads((tmp_path / "control.json").read_text())
    assert ctl["stop"] is True and fs.signals == []
    emit(tmp_path, fs, type="finished", reason="stopped")
    fs.alive = False
    out = run_for(sup, fs, 1.0)
    assert (out.exit_code, out.exit_kind, out.stop_reason) == (3, "stopped", "daemon")


@pytest.mark.parametrize(
    ("rss", "owned", "tripped"),
    [
        (6 * GB, 2 * GB, False),  # shared pages counted per process: over the 4 GB ceiling in RSS
        (6 * GB, 5 * GB, True),
    ],
)
def test_the_memory_ceiling_checks_what_the_tree_owns(
    tmp_path: Path, rss: int, owned: int, tripped: bool
) -> None:
    fs = Foreign(tree_rss=rss, tree_mem=owned)
    sup, decisions = attached(tmp_path, fs)
    emit(tmp_path, fs, type="heartbeat", phase="train", epoch=1, step=1, progress_age_s=0.0)
    run_for(sup, fs, 3.0)
    assert any(d.trigger == "memory" for d in decisions) is tripped


# --- orphan_health ------------------------------------------------------------------------
def ev(kind: str, mono: float | None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "ts": T0 + (mono or 0.0), **kw}
    if mono is not None:
        out["mono"] = mono
    return out


def test_health_is_measured_on_the_worker_s_monotonic_clock() -> None:
    events = [ev("started", 100.0), ev("step", 110.0, step=5, step_s=1.0)]
    # the wall clock jumped an hour (NTP step): mono says 5 s, so it is healthy
    h = orphan_health(events, RB, now_mono=115.0, now_wall=T0 + 3600, created_at=None)
    assert h["healthy"] and h["silent_s"] == 5.0 and h["phase"] == "train" and h["step"] == 5
    h = orphan_health(
        events, RB, now_mono=110.0 + RB.progress.step_timeout_s + 1, now_wall=T0, created_at=None
    )
    assert not h["healthy"] and h["timeout_s"] == RB.progress.step_timeout_s


def test_health_counts_a_heartbeat_at_its_last_progress_and_adapts_to_step_time() -> None:
    beat = ev("heartbeat", 200.0, phase="train", progress_age_s=55.0, step_s=1.0)
    h = orphan_health([beat], RB, now_mono=210.0, now_wall=T0, created_at=None)
    assert h["silent_s"] == 65.0 and not h["healthy"]  # demo step timeout 60 s
    slow = dict(beat, step_s=20.0)  # 5 × 20 s steps: 100 s allowed
    assert orphan_health([slow], RB, now_mono=210.0, now_wall=T0, created_at=None)["healthy"]
    evals = ev("heartbeat", 200.0, phase="eval", progress_age_s=55.0)
    h = orphan_health([evals], RB, now_mono=210.0, now_wall=T0, created_at=None)
    assert h["healthy"] and h["timeout_s"] == RB.progress.slow_phase_timeout_s


def test_health_without_events_uses_the_process_age_and_without_mono_the_wall_clock() -> None:
    startup = RB.progress.startup_timeout_s
    h = orphan_health([], RB, now_mono=0.0, now_wall=T0, created_at=T0 - startup + 5)
    assert h["healthy"] and h["phase"] == "startup"
    assert not orphan_health([], RB, 0.0, T0, created_at=T0 - startup - 5)["healthy"]
    assert not orphan_health([], RB, 0.0, T0, created_at=None)["healthy"]
    old = [{"type": "step", "ts": T0 - 10.0, "step": 3}]  # a writer without ``mono``
    assert orphan_health(old, RB, now_mono=1e9, now_wall=T0, created_at=None)["silent_s"] == 10
