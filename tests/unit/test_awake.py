"""Sleep: the inhibitor command per platform, the power warnings, and a sleep that happens
anyway — a clock gap recorded by the night runner (injected clocks), never taken for a hang,
and said in the report."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.core import awake
from orchestrator.core.state import StateStore
from orchestrator.core.system import System
from orchestrator.night.run_cmd import new_single_night
from orchestrator.night.runner import NightRunner
from orchestrator.policy import ConfigFacts, DecisionKind, NightHistory, Observation
from orchestrator.policy.clock import SLEEP_GAP_S, ClockWatch
from orchestrator.views.report.write import write_report

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("readings", "gaps"),
    [
        ([(0, 1000), (5, 1005), (10, 1010)], [None, None, None]),  # clocks in step
        ([(0, 1000), (5, 1005 + SLEEP_GAP_S)], [None, None]),  # at the threshold: noise
        ([(0, 1000), (5, 1005 + 3600)], [None, 3600]),  # an hour asleep
        ([(0, 1000), (5, 900), (10, 905)], [None, None, None]),  # wall set back: not a sleep
        ([(0, 0), (1, 7201), (2, 7202), (3, 7303)], [None, 7200, None, 100]),  # two sleeps
    ],
)
def test_clock_watch_reports_forward_gaps_only(readings: list, gaps: list) -> None:
    watch = ClockWatch()
    assert [watch.read(m, w) for m, w in readings] == gaps


def test_inhibitor_per_platform() -> None:
    have = lambda name: f"/usr/bin/{name}"  # noqa: E731
    cmd, _ = awake.inhibit_command(42, "darwin", have)
    assert cmd == ["caffeinate", "-i", "-s", "-w", "42"]  # idle + system sleep; display may sleep
    cmd, _ = awake.inhibit_command(42, "linux", have)
    assert cmd is not None and cmd[:2] == ["systemd-inhibit", "--what=sleep:idle"]
    assert cmd[-4:] == ["tail", "--pid=42", "-f", "/dev/null"]  # ends with the daemon
    assert awake.inhibit_command(42, "linux", lambda n: None) == (
        None,
        "systemd-inhibit not found (no systemd/logind)",
    )
    assert awake.SleepGuard(42, "win32").hold() == "not held: no sleep inhibitor known on win32"


def test_power_warnings_name_the_battery(monkeypatch: pytest.MonkeyPatch) -> None:
    battery = SimpleNamespace(percent=41.0, power_plugged=False, secsleft=3600)
    monkeypatch.setattr(awake.psutil, "sensors_battery", lambda: battery)
    monkeypatch.setattr(awake, "can_hold", lambda platform: None)
    [warning] = awake.power_warnings()
    assert warning.startswith("on battery (41%) — plug the machine in")
    battery.power_plugged = True
    assert awake.power_warnings() == []


class Clocks(System):
    """The runner's clocks, scripted: the machine sleeps when ``sleep_for`` is called."""

    def __init__(self) -> None:
        super().__init__()
        self.mono, self.wall_at = 100.0, time.time()

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_at

    def tick(self, seconds: float, slept: float = 0.0) -> None:
        self.mono += seconds
        self.wall_at += seconds + slept


def test_a_sleep_is_recorded_not_a_hang_and_the_report_says_so(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "var")
    state = new_single_night(
        str(ROOT / "configs/demo_conservative.yaml"),
        str(ROOT / "runbooks/demo.yaml"),
        timedelta(hours=24),
        {},
    )
    store.save(state)
    clocks = Clocks()
    runner = NightRunner(store, 0, threading.Event(), clocks, None)
    runner.night.start()
    facts = ConfigFacts(micro_batch=64, accum_steps=1, lr=1e-3, epochs=6, eval_frequency=2)
    history = NightHistory(attempts=1, attempts_without_progress=0, config=facts,
                           base_effective_batch=64)  # fmt: skip
    att: Any = SimpleNamespace(index=1)
    watch = ClockWatch()

    def decide_after(seconds: float, slept: float = 0.0) -> Any:
        clocks.tick(seconds, slept)
        now = clocks.wall()
        obs = Observation(running=True, started_at=now - 600, last_heartbeat_at=now - 3 * 3600,
                          phase="train", epoch=2, step=200, total_epochs=6, recent_step_s=1.0,
                          silent_s=1.0)  # fmt: skip
        return runner._decide_now(watch, att, obs, history)

    assert decide_after(1).kind is DecisionKind.CONTINUE
    d = decide_after(1, slept=3 * 3600)  # the lid was closed for three hours
    assert d.kind is DecisionKind.CONTINUE and d.trigger != "hang"
    saved = store.load().nights[0]
    [gap] = saved.clock_gaps
    assert gap.seconds == pytest.approx(3 * 3600, abs=1) and gap.attempt == 1
    assert decide_after(1).kind is DecisionKind.CONTINUE and len(runner.night.clock_gaps) == 1
    report = write_report(store.dir).read_text()
    assert "The machine slept 3h00m during this night (1 time" in report
    assert "not counted as a hang" in report
