"""Notifications from a real night (the fixture worker under the real night runner): the
command gets one message per fallback and the night's end, as it happens, and the morning
report lists what was sent."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestrator.core.system import System
from orchestrator.night.runner import NightRunner
from orchestrator.schedule.notify import Notifier, NotifySpec
from orchestrator.views.report.write import write_report
from tests.integration.test_night_faults import FAKE, night
from tests.unit.test_notify import received, recorder

pytestmark = pytest.mark.slow  # real processes


def test_a_real_night_notifies_each_fallback_and_its_end(tmp_path: Path) -> None:
    cmd, got = recorder(tmp_path)
    store = night(tmp_path, {"training.epochs": 2, "faults.oom_above_micro_batch": 16})
    notifier = Notifier(NotifySpec(command=cmd), store.dir)
    n = NightRunner(store, 0, threading.Event(), System(), notifier, worker=FAKE).run()
    notifier.wait(30)
    assert n.status == "succeeded" and len(n.fallbacks) == 2, n.reason
    rows = received(got)
    assert [r["event"] for r in rows] == ["fallback", "fallback", "night_end"]
    assert all(r["trigger"] == "oom" for r in rows[:2])
    assert n.name in rows[-1]["message"] and "succeeded" in rows[-1]["message"]
    text = write_report(store.dir).read_text()
    assert "Notifications sent" in text and "night_end" in text
