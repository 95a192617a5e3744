"""A stop is the last word of a run: no restart is decided after it (the next run decides)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.integration.test_night_faults import night, run_fake

pytestmark = pytest.mark.slow  # real processes


def test_no_restart_is_recorded_after_a_stop(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.3")
    store = night(tmp_path, {"training.epochs": 3})
    stop = threading.Event()
    timer = threading.Timer(2.5, stop.set)
    timer.start()
    n = run_fake(store, stop)
    timer.cancel()
    assert n.status == "stopped" and n.attempts[-1].exit_kind == "stopped"
    kinds = [d.kind for d in n.decisions]
    last_stop = max(i for i, k in enumerate(kinds) if k == "stop") if "stop" in kinds else -1
    assert "restart" not in kinds[last_stop + 1 :], [(d.kind, d.action) for d in n.decisions]
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    n = run_fake(store)
    assert n.status == "succeeded", n.reason
    resumes = [d for d in n.decisions if d.kind == "restart"]
    assert len(resumes) == 1 and resumes[0].trigger == "resume"  # decided once, by the next run
