"""A failing worker writes its ``fatal`` event before it tears the process group down: the
teardown can block (NCCL with a dead peer) until the supervisor kills the process, and the exit
kind (here: an OOM, which decides the OOM rung) must already be on disk by then."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.workerutil import DEMO, TINY, events
from trainer.__main__ import main
from trainer.events import EXIT_OOM
from trainer.runtime import dist as dist_mod

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_fatal_is_written_before_the_process_group_is_torn_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    seen_at_teardown: list[list[str]] = []

    def abandon(self: dist_mod.Dist) -> None:  # the teardown: what is on disk by now?
        seen_at_teardown.append([e["type"] for e in events(run)])

    monkeypatch.setattr(dist_mod.Dist, "abandon", abandon)
    argv = ["--config", str(DEMO), "--run-dir", str(run)]
    for s in [*TINY, "training.epochs=1", "faults.oom_at_step=2"]:
        argv += ["--set", s]
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert main(argv) == EXIT_OOM
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    assert len(seen_at_teardown) == 1
    assert "fatal" in seen_at_teardown[0], seen_at_teardown
    assert events(run, "fatal")[0]["kind"] == "oom"
