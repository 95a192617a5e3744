"""Whole nights through the night runner: first against the fast fixture worker (runner logic,
crash safety, daemon stop), then against the REAL worker on the demo config with each injected
fault, each ending in a completed night whose state shows the right fallback (slow marker).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.core.state import Attempt, Night, StateStore, now_iso
from orchestrator.core.system import System
from orchestrator.night.run_cmd import new_single_night
from orchestrator.night.runner import NightRunner, run_night
from orchestrator.preflight.features import costs_from_record
from orchestrator.preflight.fit import read_fits
from tests.workerutil import repair_runbook
from trainer.events_read import read_events

pytestmark = pytest.mark.slow  # real processes


ROOT = Path(__file__).resolve().parents[2]
FAKE = [sys.executable, str(ROOT / "tests/integration/fixtures/fake_worker.py")]
CONFIG = str(ROOT / "configs/demo_conservative.yaml")
DEMO_RB = ROOT / "runbooks/demo.yaml"


def runbook(tmp_path: Path, **changes: Any) -> str:
    """The demo runbook with some values changed (dotted keys)."""
    raw = yaml.safe_load(DEMO_RB.read_text())
    for key, value in changes.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path = tmp_path / "runbook.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def night(
    tmp_path: Path,
    overrides: dict[str, Any],
    window_s: float = 600,
    rb: str | None = None,
    config: str = CONFIG,
) -> StateStore:
    store = StateStore(tmp_path / "var")
    state = new_single_night(config, rb or str(DEMO_RB), timedelta(seconds=window_s), overrides)
    store.save(state)
    return store


def run_fake(store: StateStore, stop: threading.Event | None = None) -> Night:
    runner = NightRunner(store, 0, stop or threading.Event(), System(), None, worker=FAKE)
    return runner.run()


# --- fixture worker: runner logic --------------------------------------------------------------
def test_oom_ladder_keeps_effective_batch(tmp_path: Path) -> None:
    store = night(tmp_path, {"training.epochs": 2, "faults.oom_above_micro_batch": 16})
    n = run_fake(store)
    assert n.status == "succeeded", n.reason
    assert [a.exit_kind for a in n.attempts] == ["oom", "oom", "finished"]
    last = n.attempts[-1].overrides
    assert (last["data.batch_size"], last["training.accumulation_steps"]) == (16, 4)
    assert "effective batch 64 kept" in n.fallbacks[-1].effect
    assert n.final_metrics is not None and n.baseline_metrics is not None
    # the fixture's kNN@20 gains 0.2 and its probe 0.08 over two epochs: must and should pass,
    # stretch (probe +0.15) does not
    assert n.forecast_error_s is not None and n.success.level == "should"


@pytest.mark.parametrize("recorded", [None, 1.6, 2.5])
def test_the_flash_speedup_criterion_reads_preflights_record(
    tmp_path: Path, recorded: float | None
) -> None:
    """should: speedup_vs_no_flash >= 2 — from preflight.jsonl for the night's config; with no
    record the check says "not measured" and fails instead of passing silently."""
    success = yaml.safe_load(DEMO_RB.read_text())["success"]
    success["should"] = [{"metric": "speedup_vs_no_flash", "op": ">=", "value": 2.0}]
    store = night(tmp_path, {"training.epochs": 2}, rb=runbook(tmp_path, success=success))
    if recorded is not None:
        row = {"config": CONFIG, "micro": 64, "ms_flash_on": 100.0,
               "ms_flash_off": 100.0 * recorded, "speedup_vs_no_flash": recorded}  # fmt: skip
        (store.dir / "preflight.jsonl").write_text(json.dumps(row) + "\n")
    n = run_fake(store)
    assert n.status == "succeeded" and n.success is not None, n.reason
    check = next(c for c in n.success.checks if c.name == "speedup_vs_no_flash >= 2")
    assert check.value == recorded and check.passed is (recorded is not None and recorded >= 2)
    assert n.success.level == ("should" if check.passed else "must")
    if recorded is None:
        assert check.evidence["missing"].startswith("not measured")
    else:
        assert "100.0 ms/step with flash attention" in check.evidence["source"]


def stop_once_training(state_dir: Path, stop: threading.Event) -> None:
    """Ask the night to stop as soon as its first attempt has trained a step (however long
    the probe before it took): the stop lands mid-night, never after the night has ended."""
    while not stop.is_set():
        for events in state_dir.glob("runs/*/attempt-*/events.jsonl"):
            if any(e.get("type") == "step" for e in read_events(events)):
                stop.set()
                return
        time.sleep(0.1)


@pytest.mark.parametrize("preflight_row", [False, True])
def test_a_night_without_a_record_probes_its_features_once_at_start(
    tmp_path: Path, monkeypatch: Any, preflight_row: bool
) -> None:
    """No preflight record for the config: before its first attempt the night runs the feature
    probe once (one worker process, every optional feature the config turns on) and records it
    beside preflight's rows; the flash criterion and the report read it. A restarted attempt
    (the NaN rung) and a resumed night (a stop, then a new runner) do not probe again. With a
    preflight record the night does not probe at all and the criterion reads preflight's."""
    monkeypatch.setenv("HJEPA_FEATURE_PROBE", "1")
    monkeypatch.setenv("FAKE_STEP_S", "0.3")
    success = yaml.safe_load(DEMO_RB.read_text())["success"]
    success["should"] = [{"metric": "speedup_vs_no_flash", "op": ">=", "value": 2.0}]
    store = night(tmp_path, {"training.epochs": 3, "faults.nonfinite_at_step": 5},
                  rb=runbook(tmp_path, success=success))  # fmt: skip
    if preflight_row:
        row = {"config": CONFIG, "source": "preflight", "micro": 64, "ms_flash_on": 100.0,
               "ms_flash_off": 180.0, "speedup_vs_no_flash": 1.8, "features": []}  # fmt: skip
        (store.dir / "preflight.jsonl").write_text(json.dumps(row) + "\n")
    stop = threading.Event()
    watcher = threading.Thread(target=stop_once_training, args=(store.dir, stop), daemon=True)
    watcher.start()
    n = run_fake(store, stop)
    stop.set()
    watcher.join()
    assert n.status == "stopped", n.reason
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    n = run_fake(store)
    assert n.status == "succeeded" and n.success is not None, n.reason
    assert n.fallbacks and n.fallbacks[0].trigger == "nonfinite"  # a restarted attempt
    rows = read_fits(store.dir)
    check = next(c for c in n.success.checks if c.name == "speedup_vs_no_flash >= 2")
    probe_dir = store.dir / "runs" / n.name / "feature-probe"
    if preflight_row:
        assert len(rows) == 1 and not probe_dir.exists()
        assert check.value == 1.8 and check.evidence["source"].startswith("preflight probe")
        return
    (row,) = rows  # one probe, however many attempts and runners the night took
    assert row["source"] == "night start" and row["night"] == n.name and "error" not in row
    # the demo conservative config turns on flash attention alone; the fixture worker takes
    # FAKE_FLASH_SPEEDUP times as long without it
    (cost,) = costs_from_record(row)
    assert cost.feature == "flash_attention" and cost.speed_factor == pytest.approx(2.5)
    assert (cost.on.peak, cost.off.peak) == (2**30, int(1.2 * 2**30))
    assert check.passed and check.value == 2.5
    assert check.evidence["source"].startswith("night start probe at micro-batch 64")
    # a config with no optional feature on has nothing to probe
    bare = night(tmp_path / "bare", {"training.epochs": 1, "model.use_flash_attention": False})
    assert run_fake(bare).attempts[0].exit_kind == "finished"
    assert read_fits(bare.dir) == [] and not (bare.dir / "runs" / n.name / "feature-probe").exists()


def test_nonfinite_rolls_back_before_the_bad_step(tmp_path: Path) -> None:
    store = night(tmp_path, {"training.epochs": 3, "faults.nonfinite_at_step": 7})
    n = run_fake(store)
    assert n.status == "succeeded", n.reason
    fb = n.fallbacks[0]
    assert fb.trigger == "nonfinite" and fb.evidence["bad_step"] == 7
    assert n.attempts[1].resume_from.endswith("ckpt-e0001-s00000004.pt")
    assert n.attempts[1].overrides["training.lr"] == 5e-4


def test_limits_end_the_night_with_the_best_checkpoint(tmp_path: Path) -> None:
    rb = runbook(tmp_path, **{"limits.max_attempts": 2})
    store = night(tmp_path, {"faults.raise_in_feature": "vicreg"}, rb=rb)
    n = run_fake(store)  # vicreg is not in the disable list: the crash repeats
    assert n.status == "failed"
    assert [a.exit_kind for a in n.attempts] == ["feature", "feature"]
    assert (n.reason or "").startswith("attempt limit reached (2/2)"), n.reason


def test_missing_dataset_switches_to_fallback(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("FAKE_MISSING_DATA", "1")
    store = night(tmp_path, {"training.epochs": 2})
    n = run_fake(store)
    assert n.status == "succeeded", n.reason
    assert n.fallbacks[0].trigger == "data"
    assert n.attempts[-1].overrides["data.datasets"] == [{"name": "synthetic", "weight": 1.0}]


def test_daemon_stop_leaves_night_resumable_then_resumes(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.3")
    store = night(tmp_path, {"training.epochs": 3})
    stop = threading.Event()
    timer = threading.Timer(2.5, stop.set)
    timer.start()
    n = run_fake(store, stop)
    timer.cancel()
    assert n.status == "stopped" and n.attempts[-1].exit_kind == "stopped"
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    n = run_fake(store)
    assert n.status == "succeeded", n.reason
    assert n.attempts[1].resume_from is not None  # continued from a checkpoint, not step 0
    assert not n.fallbacks  # a daemon stop is not a fallback


def orphan(store: StateStore, sets: list[str]) -> tuple[int, Path, System]:
    """A worker whose supervisor died: spawned by another System, its attempt recorded open."""
    state = store.load()
    n = state.nights[0]
    run_dir = store.dir / "runs" / n.name / "attempt-01"
    system = System()
    argv = [*FAKE, "--config", CONFIG, "--run-dir", str(run_dir)]
    for item in sets:
        argv += ["--set", item]
    pid = system.spawn(argv, ROOT, run_dir / "worker.log")
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
    return pid, run_dir, system


def wait_for_event(run_dir: Path, kind: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not any(ev["type"] == kind for ev in read_events(run_dir / "events.jsonl")):
        assert time.monotonic() < end, f"no {kind} event in {run_dir}"
        time.sleep(0.1)


def test_crash_safety_reattaches_to_a_live_healthy_worker(tmp_path: Path, monkeypatch: Any) -> None:
    """A previous supervisor died mid-attempt and its worker still trains. The next run_night
    re-attaches to it (same pid, same attempt, same run dir), supervises it to its end and
    reads the ending from its events: no restart, no epoch trained twice."""
    monkeypatch.setenv("FAKE_STEP_S", "0.5")
    store = night(tmp_path, {"training.epochs": 3})
    pid, run_dir, system = orphan(store, ["training.epochs=3"])
    wait_for_event(run_dir, "epoch_end")  # the orphan makes some progress first
    n = run_fake(store)
    assert n.status == "succeeded", n.reason
    assert len(n.attempts) == 1 and n.attempts[0].pid == pid
    att = n.attempts[0]
    assert (att.exit_kind, att.exit_code) == ("finished", 0)
    events = read_events(run_dir / "events.jsonl")
    assert [ev["type"] for ev in events].count("started") == 1  # never restarted
    assert [ev["epoch"] for ev in events if ev["type"] == "epoch_end"] == [1, 2, 3]
    steps = [ev["step"] for ev in events if ev["type"] == "step"]
    assert steps == sorted(set(steps))  # no step trained twice
    kinds = [d.kind for d in n.decisions]
    assert kinds.count("reattached") == 1 and "stop" not in kinds
    assert not system.is_alive(pid, None)
    assert n.final_metrics is not None and n.final_metrics.epoch == 3


def test_crash_safety_stops_a_hung_orphan_and_resumes(tmp_path: Path, monkeypatch: Any) -> None:
    """The orphan is alive but hung (no event for longer than the step timeout): it is not
    adopted but killed (SIGTERM → SIGKILL on its group), and the night resumes from its newest
    checkpoint in a new attempt."""
    monkeypatch.setenv("FAKE_STEP_S", "0.2")
    rb = runbook(tmp_path, **{"progress.step_timeout_s": 2, "progress.term_grace_s": 1})
    store = night(tmp_path, {"training.epochs": 3}, rb=rb)
    pid, run_dir, system = orphan(store, ["training.epochs=3", "faults.hang_at_step=5"])
    wait_for_event(run_dir, "checkpoint")  # epoch 1's checkpoint, then it hangs at step 5
    time.sleep(3.0)
    t0 = time.monotonic()
    n = run_fake(store)
    assert n.status == "succeeded", n.reason
    assert not system.is_alive(pid, None)
    first = n.attempts[0]
    assert first.exit_kind == "stopped" and first.exit_code is None
    assert "no progress" in (first.message or "")
    assert "reattached" not in [d.kind for d in n.decisions]
    assert n.attempts[1].resume_from is not None
    assert n.attempts[1].resume_from.endswith("ckpt-e0001-s00000004.pt")
    assert time.monotonic() - t0 < 40  # no 60 s wait for a control file it never reads


def test_finished_night_is_not_rerun(tmp_path: Path) -> None:
    store = night(tmp_path, {"training.epochs": 2})
    first = run_fake(store)
    again = run_fake(store)
    assert first.status == again.status == "succeeded"
    assert len(again.attempts) == 1


def test_a_rung_the_recipe_rejects_is_skipped_and_the_night_goes_on(tmp_path: Path) -> None:
    rb = runbook(
        tmp_path,
        **{"ladders.oom": [{"set": {"data.batch_size": -4}}, {"set": {"data.batch_size": 16}}]},
    )
    store = night(tmp_path, {"training.epochs": 2, "faults.oom_above_micro_batch": 16}, rb=rb)
    n = run_fake(store)
    assert n.status == "succeeded", n.reason
    skipped = [d for d in n.decisions if d.kind == "rung_skipped"]
    assert len(skipped) == 1 and "data.batch_size" in skipped[0].evidence["error"]
    assert [a.exit_kind for a in n.attempts] == ["oom", "finished"]
    assert n.attempts[-1].overrides["data.batch_size"] == 16
    assert not (store.dir / "runs" / n.name / "pictures").exists()  # the worker's own count
    from orchestrator.views.report.write import write_report

    text = write_report(store.dir).read_text()
    assert "rung skipped: " in text and "does not apply to this recipe" in text


def test_best_checkpoint_is_the_best_by_metric_not_the_newest(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("FAKE_BEST_EPOCH", "1")
    store = night(tmp_path, {"training.epochs": 3})
    n = run_fake(store)
    assert n.status == "succeeded", n.reason
    assert n.best_checkpoint is not None and n.best_checkpoint.endswith("ckpt-e0001-s00000004.pt")
    # the worker pictured its last checkpoint, not the night's best: a --pictures worker did
    ran = read_events(store.dir / "runs" / n.name / "pictures" / "events.jsonl")
    assert [ev["checkpoint"] for ev in ran if ev["type"] == "pictures"] == [n.best_checkpoint]
    (pics,) = [d for d in n.decisions if d.kind == "pictures"]
    assert pics.evidence["checkpoint"] == n.best_checkpoint
    assert pics.evidence["problem"] == "the stand-in worker draws none"  # its reason, recorded


def test_an_error_inside_the_runner_still_ends_the_night(tmp_path: Path, monkeypatch: Any) -> None:
    """An exception in the runner's own code (here: an observer of the state) is recorded,
    the worker it was supervising is stopped, and the night gets an ending and a reason."""
    monkeypatch.setenv("FAKE_STEP_S", "0.2")
    store = night(tmp_path, {"training.epochs": 3})
    raised: list[int] = []

    def observer(state: Any) -> None:
        n = state.nights[0]
        if not raised and n.attempts and n.attempts[-1].pid and n.epochs_done:
            raised.append(n.attempts[-1].pid)
            raise RuntimeError("observer broke")

    runner = NightRunner(store, 0, threading.Event(), System(), observer, worker=FAKE)
    n = runner.run()
    assert raised
    # an epoch trained and evaluated before the error: partial (failed only without a model)
    assert n.status == "partial" and n.ended_at is not None, n.status
    assert "the night runner failed: RuntimeError: observer broke" in (n.reason or "")
    assert any(d.kind == "runner_error" for d in store.load().nights[0].decisions)
    assert not System().is_alive(raised[0], n.attempts[0].pid_create_time)
    assert store.load().nights[0].status == n.status
    from orchestrator.views.report.write import write_report

    text = write_report(store.dir).read_text()
    assert "**runner error**: the night runner failed: RuntimeError: observer broke" in text


# --- the real worker (python -m trainer) on the demo config --------------------------------------
TINY = {
    "data.synthetic.num_train": 128,
    "data.synthetic.num_eval_train": 128,
    "data.synthetic.num_eval_test": 128,
    "evaluation.max_train_samples": 128,
    "evaluation.max_test_samples": 128,
    "evaluation.rank_samples": 128,
    "evaluation.linear_probe.max_iter": 50,
    "evaluation.eval_frequency": 2,
    "model.depth": 2,
    "model.predictor.depth": 1,
    "training.epochs": 2,
    "data.batch_size": 32,
    "training.accumulation_steps": 2,
    "logging.heartbeat_s": 1.0,
}


def real(
    tmp_path: Path, faults: dict[str, Any], window_s: float = 900, rb: str | None = None
) -> Night:
    store = night(tmp_path, {**TINY, **faults}, window_s=window_s, rb=rb)
    return run_night(store, 0)


def overrides_of(n: Night) -> dict[str, Any]:
    return n.attempts[-1].overrides


@pytest.mark.slow
def test_real_oom_shrinks_micro_batch_keeps_effective_batch(tmp_path: Path) -> None:
    n = real(tmp_path, {"faults.oom_above_micro_batch": 16}, rb=repair_runbook(tmp_path))
    assert n.attempts[0].exit_kind == "oom"
    assert n.attempts[-1].exit_kind == "finished", n.reason
    o = overrides_of(n)
    assert o["data.batch_size"] * o["training.accumulation_steps"] == 64
    assert o["data.batch_size"] <= 16 and n.status == "succeeded", n.reason
    # the last worker pictured the night's best checkpoint at its end: no extra process
    (pics,) = [d.evidence for d in n.decisions if d.kind == "pictures"]
    assert pics["problem"] == "" and pics["checkpoint"] == n.best_checkpoint, pics
    assert Path(pics["path"]).is_file()
    assert Path(pics["path"]).parent.parent == Path(n.attempts[-1].run_dir)


@pytest.mark.slow
def test_real_nan_rolls_back_with_lower_lr(tmp_path: Path) -> None:
    n = real(tmp_path, {"faults.nonfinite_at_step": 3})  # 2 optimizer steps per epoch
    assert n.attempts[0].exit_kind == "nonfinite"
    fb = n.fallbacks[0]
    ckpt = n.attempts[1].resume_from
    assert ckpt is not None and int(Path(ckpt).stem.split("-s")[1]) < fb.evidence["bad_step"]
    assert overrides_of(n)["training.lr"] < 1e-3
    assert n.attempts[-1].exit_kind == "finished", n.reason


@pytest.mark.slow
def test_real_feature_failure_disables_it(tmp_path: Path) -> None:
    n = real(tmp_path, {"faults.raise_in_feature": "flash_attention"})
    assert n.attempts[0].exit_kind == "feature"
    assert overrides_of(n)["model.use_flash_attention"] is False
    assert n.attempts[-1].exit_kind == "finished", n.reason
    # the night trained to the end, but without a feature it started with: not succeeded
    assert n.success is not None and n.status == "partial" and n.success.level == "none"
    intact = next(c for c in n.success.checks if c.name.startswith("features_intact"))
    assert intact.passed is False
    assert intact.evidence["features"]["flash_attention"].startswith("switched off")


@pytest.mark.slow
def test_real_slow_steps_cut_epochs_live(tmp_path: Path) -> None:
    # 2 steps/epoch + a 5 s delay per step: 8 epochs (80 s) cannot fit a 75 s window less
    # its 15 s final-evaluation reserve
    rb = runbook(tmp_path, **{"ladders.slow.epochs": [], "final_eval_minutes": 0.25})
    n = real(tmp_path, {"training.epochs": 8, "faults.step_delay_s": 5.0}, window_s=75, rb=rb)
    cut = [d for d in n.decisions if d.kind == "set_epochs"]
    assert cut and len(n.attempts) == 1  # no restart
    assert n.attempts[0].exit_kind in ("finished", "stopped")
    assert n.epochs_planned is not None and n.epochs_planned < 8
    assert n.final_metrics is not None and n.ended_at is not None


@pytest.mark.slow
def test_real_hang_is_killed_and_resumed(tmp_path: Path) -> None:
    rb = runbook(tmp_path, **{"progress.step_timeout_s": 8, "progress.term_grace_s": 3})
    n = real(tmp_path, {"faults.hang_at_step": 3}, rb=rb)
    assert n.attempts[0].exit_kind == "hang"
    hang = n.decisions[0].evidence  # the step timeout, stretched to the run's own pace
    assert hang["phase"] == "train"
    assert hang["timeout_s"] == pytest.approx(max(8, 5 * hang["recent_step_s"]), abs=0.1)
    assert n.attempts[1].resume_from is not None
    assert n.attempts[-1].exit_kind == "finished", n.reason


@pytest.mark.slow
def test_real_memory_ceiling_shrinks_batch(tmp_path: Path) -> None:
    # a ceiling under the worker's real use: the first rung is taken, then the ladder is
    # exhausted and the night carries on (warned once) to a finished model
    rb = runbook(
        tmp_path, **{"memory.ceiling_gb": 0.05, "ladders.oom": [{"set": {"data.batch_size": 16}}]}
    )
    n = real(tmp_path, {}, rb=rb)
    assert n.attempts[0].exit_kind == "memory"
    assert overrides_of(n)["data.batch_size"] == 16
    assert overrides_of(n)["training.accumulation_steps"] == 4
    assert n.attempts[-1].exit_kind == "finished", n.reason


@pytest.mark.slow
def test_real_missing_dataset_falls_back(tmp_path: Path) -> None:
    n = real(tmp_path, {"data.datasets": [{"name": "cifar10", "path": str(tmp_path / "none")}]})
    assert n.attempts[0].exit_kind == "data"
    assert overrides_of(n)["data.datasets"] == [{"name": "synthetic", "weight": 1.0}]
    assert n.attempts[-1].exit_kind == "finished", n.reason


@pytest.mark.slow
@pytest.mark.parametrize("feature", ["contrastive", "fpn"])
def test_real_aggressive_feature_rungs_resume_mid_run(tmp_path: Path, feature: str) -> None:
    """The aggressive recipe's first two feature rungs, on its demo: the fault fires after a
    checkpoint exists; the next attempt resumes from it (not step 0) with the feature off —
    for FPN loading every weight that still fits and naming what it dropped."""
    faults = {"faults.raise_in_feature": feature, "faults.raise_in_feature_after_step": 3}
    store = night(tmp_path, {**TINY, **faults}, config=str(ROOT / "configs/demo_aggressive.yaml"))
    n = run_night(store, 0)
    assert [a.exit_kind for a in n.attempts] == ["feature", "finished"], n.reason
    assert n.status == "partial"  # a feature it started with is off: features_intact fails
    second = n.attempts[1]
    assert second.resume_from is not None and "-s00000002" in second.resume_from
    from trainer.events_read import read_events

    evs = read_events(Path(second.run_dir) / "events.jsonl")
    started = next(e for e in evs if e["type"] == "started")
    assert started["start_step"] == 2 and started["features"][feature] == "off"
    if feature == "fpn":
        partial = [e for e in evs if e["type"] == "resume_partial"]
        assert partial and any("fpn" in k for k in partial[0]["dropped"]), partial
        from orchestrator.views.report.write import write_report

        text = write_report(store.dir).read_text()
        assert "attempt 2 resumed `ckpt-e0001-s00000002.pt` partially: dropped" in text


@pytest.mark.slow
def test_real_fp16_overflow_is_skipped_not_a_fallback(tmp_path: Path) -> None:
    """fp16 with a GradScaler on the CPU: routine overflow steps are skipped and counted, the
    night spends no rung of the non-finite ladder on them, and the report says how many."""
    n = real(
        tmp_path,
        {
            "training.precision": "fp16",
            "faults.grad_overflow_at_step": 2,
            "training.epochs": 4,
            "faults.grad_overflow_steps": 3,
            "logging.log_frequency": 1,
        },
    )
    assert [a.exit_kind for a in n.attempts] == ["finished"], n.reason
    assert not n.fallbacks
    from orchestrator.views.report.write import write_report
    from trainer.events_read import read_events

    steps = [
        e for e in read_events(Path(n.attempts[0].run_dir) / "events.jsonl") if e["type"] == "step"
    ]
    assert max(e["overflow_steps"] for e in steps) == 3
    text = write_report(Path(n.attempts[0].run_dir).parents[2]).read_text()
    assert "gradient-overflow steps skipped" in text and "attempt 1: 3" in text


@pytest.mark.slow
def test_real_slow_steps_are_not_a_hang(tmp_path: Path) -> None:
    """Every step takes 1.5x the runbook's step timeout: slow, not hung. The timeout follows
    the run's own pace (step_timeout_factor × recent step time) and nothing is killed."""
    rb = runbook(tmp_path, **{"progress.step_timeout_s": 3, "progress.term_grace_s": 3})
    n = real(tmp_path, {"faults.step_delay_s": 4.5, "logging.log_frequency": 1}, rb=rb)
    assert [a.exit_kind for a in n.attempts] == ["finished"], n.reason
    assert not [d for d in n.decisions if d.trigger == "hang"]
    from trainer.events_read import read_events

    steps = [
        e for e in read_events(Path(n.attempts[0].run_dir) / "events.jsonl") if e["type"] == "step"
    ]
    slowest = max(e["step_s"] for e in steps if e.get("step_s"))
    assert slowest >= 4.5
    print(
        f"false-hang check: steps of {slowest:.1f} s against a 3 s step timeout "
        f"(adaptive limit {5 * slowest:.0f} s): not killed"
    )
