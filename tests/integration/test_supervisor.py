"""The supervisor with real processes: small misbehaving workers (tests/integration/fixtures)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.runbook import load_runbook
from orchestrator.core.system import System
from orchestrator.night.supervisor import SAMPLES_FILE, Supervisor
from orchestrator.policy import ConfigFacts, NightHistory, Observation, decide

pytestmark = pytest.mark.slow  # real processes


ROOT = Path(__file__).resolve().parents[2]
FAKE = ROOT / "tests/integration/fixtures/fake_worker.py"
RB = load_runbook(ROOT / "runbooks/demo.yaml").model_copy(deep=True)
RB.progress.step_timeout_s = 2.0
RB.progress.term_grace_s = 1.5
RB.sampling_interval_s = 0.5


def history() -> NightHistory:
    facts = ConfigFacts(micro_batch=64, accum_steps=1, lr=1e-3, epochs=3, eval_frequency=2)
    return NightHistory(
        attempts=1, attempts_without_progress=0, config=facts, base_effective_batch=64
    )


def wall_clock(obs: Observation, deadline: float) -> float:
    return time.time()


def supervise(
    tmp_path: Path,
    *sets: str,
    env: dict[str, str] | None = None,
    now: Callable[[Observation, float], float] = wall_clock,
) -> tuple[Any, list[Any]]:
    """The fixture worker under a real supervisor, with a deadline 10 min away; the policy
    sees the time ``now(observation, deadline)`` gives (the wall clock unless a test moves
    it)."""
    system = System()
    deadline = time.time() + 600
    decisions: list[Any] = []
    argv = [sys.executable, str(FAKE), "--run-dir", str(tmp_path)]
    for s in sets:
        argv += ["--set", s]
    old = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        sup = Supervisor(
            system,
            RB,
            run_dir=tmp_path,
            argv=argv,
            cwd=ROOT,
            deadline=deadline,
            decide=lambda o: decide(o, history(), RB, now(o, deadline), deadline),
            on_decision=decisions.append,
            poll_s=0.1,
        )
        sup.launch()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return sup.run(), decisions


def test_clean_run_finishes_and_samples_memory(tmp_path: Path) -> None:
    out, _ = supervise(tmp_path, "training.epochs=2")
    assert (out.exit_code, out.exit_kind) == (0, "finished")
    assert len(out.view.checkpoints) == 3 and out.view.epoch == 2
    samples = [json.loads(x) for x in (tmp_path / SAMPLES_FILE).read_text().splitlines()]
    assert samples and samples[0]["worker_rss"] > 0 and samples[0]["sys_available"] > 0
    owned = samples[0]["tree_measure"]  # what the memory ceiling checks, named
    assert owned == ("pss" if sys.platform == "linux" else "uss") and samples[0]["tree_mem"] > 0


def test_hung_worker_is_killed_within_the_timeout(tmp_path: Path) -> None:
    t0 = time.monotonic()
    out, decisions = supervise(tmp_path, "training.epochs=50", "faults.hang_at_step=3")
    took = time.monotonic() - t0
    assert out.exit_kind == "hang"
    assert decisions[0].trigger == "hang" and decisions[0].evidence["timeout_s"] == 2.0
    assert took < 2.0 + RB.progress.term_grace_s + 10  # timeout + grace + start-up slack


def test_worker_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    out, _ = supervise(
        tmp_path, "training.epochs=50", "faults.hang_at_step=2", env={"FAKE_IGNORE_TERM": "1"}
    )
    assert out.exit_code == -9 and out.exit_kind == "hang"


def test_oom_seen_only_in_stderr_is_classified_oom(tmp_path: Path) -> None:
    out, _ = supervise(tmp_path, "faults.oom_above_micro_batch=16", env={"FAKE_OOM_TEXT_ONLY": "1"})
    assert (out.exit_code, out.exit_kind) == (1, "oom")
    assert "out of memory" in out.message


def test_nan_worker_reports_the_bad_step(tmp_path: Path) -> None:
    out, _ = supervise(tmp_path, "faults.nonfinite_at_step=6")
    assert (out.exit_code, out.exit_kind) == (11, "nonfinite")
    assert out.view.fatal["step"] == 5  # steps completed, as the real worker reports it


def test_deadline_stop_ends_evaluated(tmp_path: Path) -> None:
    # one 8 s epoch; once it has stepped, the policy's clock reads the deadline less the
    # final-eval reserve: nothing to cut, stop with an eval
    def reserve_reached_once_stepping(obs: Observation, deadline: float) -> float:
        return deadline - RB.final_eval_s if obs.step >= 1 else time.time()

    out, decisions = supervise(
        tmp_path, "training.epochs=1", env={"FAKE_STEP_S": "2"}, now=reserve_reached_once_stepping
    )
    assert [d.kind.value for d in decisions] == ["stop_for_deadline"]
    assert (out.exit_kind, out.stop_reason) == ("stopped", "deadline")
    assert out.view.evals[-1]["epoch"] == out.view.epoch  # the final eval ran
