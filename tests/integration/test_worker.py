"""The real worker as a subprocess: contract, exact resume, corrupt checkpoints, faults, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import yaml

from tests.workerutil import (
    DEMO,
    DEMO_AGGRESSIVE,
    ROOT,
    TINY,
    env,
    events,
    run_worker,
    start_worker,
    wait_for,
    worker_cmd,
)
from trainer import checkpoints as ck
from trainer.events import (
    EXIT_DATA,
    EXIT_FEATURE,
    EXIT_NONFINITE,
    EXIT_OK,
    EXIT_OOM,
    EXIT_STOPPED,
    EXIT_USAGE,
    Control,
    write_control,
)

pytestmark = pytest.mark.slow


def test_completed_run_honours_the_event_contract(tmp_path):
    r = run_worker(tmp_path)
    assert r.returncode == EXIT_OK, r.stderr
    evs = events(tmp_path)
    types = [e["type"] for e in evs]
    assert types[0] == "started" and types[-1] == "finished"
    assert all({"v", "type", "ts"} <= set(e) for e in evs)
    started = evs[0]
    assert started["features"]["flash_attention"].startswith("on")
    assert started["steps_per_epoch"] == 256 // 16
    evals = events(tmp_path, "eval")
    assert [e["epoch"] for e in evals] == [0, 1, 2]  # random encoder first
    for e in evals:
        assert set(e["knn"]) == {"1", "5", "20"} and all(0 <= v <= 1 for v in e["knn"].values())
        assert e["feature_std"] > 0 and e["effective_rank"] > 1
    steps = events(tmp_path, "step")
    assert [s["step"] for s in steps] == list(range(1, 33))
    assert all(len(s["loss_levels"]) == 3 and s["grad_norm"] > 0 for s in steps)
    assert [e["epoch"] for e in events(tmp_path, "epoch_end")] == [1, 2]
    assert len(events(tmp_path, "heartbeat")) >= 1
    resolved = yaml.safe_load((tmp_path / "config.resolved.yaml").read_text())
    assert resolved["data"]["batch_size"] == 16 and resolved["model"]["depth"] == 2
    assert len(ck.list_checkpoints(tmp_path / "checkpoints")) == 2
    assert (tmp_path / "checkpoints" / "best.pt").exists()


def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    sets = ["training.epochs=3"]
    assert run_worker(full, sets).returncode == EXIT_OK
    proc = start_worker(cut, [*sets, "faults.step_delay_s=0.3"])
    assert wait_for(lambda: any(e["step"] >= 21 for e in events(cut, "step")), 180)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == EXIT_STOPPED
    stop = events(cut, "checkpoint")[-1]
    assert stop["reason"] == "stop" and 21 <= stop["step"] < 48
    r = run_worker(cut, sets, "--resume", "auto")
    assert r.returncode == EXIT_OK, r.stderr
    resumed = events(cut, "resumed")
    assert resumed and resumed[0]["step"] == stop["step"]
    ref = {e["step"]: e["loss"] for e in events(full, "step")}
    got = {}
    for e in events(cut, "step"):
        got[e["step"]] = e["loss"]  # later (resumed) values overwrite nothing before the stop
    assert sorted(got) == sorted(ref)
    for step, loss in ref.items():
        assert got[step] == pytest.approx(loss, abs=1e-5), step
    assert events(full, "eval")[-1]["knn"] == events(cut, "eval")[-1]["knn"]


def test_corrupt_newest_checkpoint_is_skipped_loudly(tmp_path):
    assert run_worker(tmp_path, ["training.epochs=3"]).returncode == EXIT_OK
    newest = ck.list_checkpoints(tmp_path / "checkpoints")[0]
    newest.write_bytes(newest.read_bytes()[:-64])
    r = run_worker(tmp_path, ["training.epochs=4"], "--resume", "auto")
    assert r.returncode == EXIT_OK, r.stderr
    rejected = events(tmp_path, "checkpoint_rejected")
    assert rejected and rejected[0]["path"] == str(newest)
    resumed = events(tmp_path, "resumed")[-1]
    assert resumed["step"] == 32 and resumed["epoch"] == 3  # from epoch 2's checkpoint


def test_resume_without_checkpoint_refuses_to_start_over(tmp_path):
    r = run_worker(tmp_path, [], "--resume", "auto")
    assert r.returncode == 15
    assert events(tmp_path, "fatal")[0]["kind"] == "resume"
    assert not events(tmp_path, "step")


@pytest.mark.parametrize("sets,code,kind,feature", [
    (["faults.oom_above_micro_batch=8"], EXIT_OOM, "oom", None),
    (["faults.nonfinite_at_step=3"], EXIT_NONFINITE, "nonfinite", None),
    (["faults.raise_in_feature=layerscale"], EXIT_FEATURE, "feature", "layerscale"),
])
def test_fault_injection_gives_its_kind_and_exit_code(tmp_path, sets, code, kind, feature):
    r = run_worker(tmp_path, [*sets, "evaluation.eval_at_start=false"])
    assert r.returncode == code, r.stderr
    fatal = events(tmp_path, "fatal")
    assert len(fatal) == 1 and fatal[0]["kind"] == kind and fatal[0]["feature"] == feature


def test_nonfinite_is_caught_before_the_optimizer_step_and_passes_on_restart(tmp_path):
    sets = ["faults.nonfinite_at_step=20", "evaluation.eval_at_start=false"]
    assert run_worker(tmp_path, sets).returncode == EXIT_NONFINITE
    assert max(e["step"] for e in events(tmp_path, "step")) == 19
    r = run_worker(tmp_path, sets, "--resume", "auto")  # from epoch 1 (step 16)
    assert r.returncode == EXIT_OK, r.stderr
    assert max(e["step"] for e in events(tmp_path, "step")) == 32


def test_feature_fault_only_fires_while_the_feature_is_on(tmp_path):
    sets = ["faults.raise_in_feature=fpn", "evaluation.eval_at_start=false",
            "training.epochs=1"]
    r = run_worker(tmp_path / "on", sets, config=DEMO_AGGRESSIVE)
    assert r.returncode == EXIT_FEATURE
    assert events(tmp_path / "on", "fatal")[0]["feature"] == "fpn"
    r = run_worker(tmp_path / "off", [*sets, "model.use_fpn=false"], config=DEMO_AGGRESSIVE)
    assert r.returncode == EXIT_OK, r.stderr


def test_hang_stops_progress_and_heartbeats(tmp_path):
    proc = start_worker(tmp_path, ["faults.hang_at_step=4", "evaluation.eval_at_start=false"])
    try:
        assert wait_for(lambda: any(e["step"] == 3 for e in events(tmp_path, "step")), 120)
        time.sleep(2.0)
        n = len(events(tmp_path))
        time.sleep(3.0)  # heartbeat period is 0.5 s: a live worker would have written ~6
        assert len(events(tmp_path)) == n and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_control_file_cuts_epochs_live(tmp_path):
    proc = start_worker(tmp_path, ["training.epochs=6", "faults.step_delay_s=0.05",
                                   "evaluation.eval_at_start=false"])
    assert wait_for(lambda: bool(events(tmp_path, "step")), 120)
    write_control(tmp_path, Control(seq=1, epochs=2))
    assert proc.wait(180) == EXIT_OK
    assert events(tmp_path, "control")[0]["epochs"] == 2
    assert [e["epoch"] for e in events(tmp_path, "epoch_end")] == [1, 2]
    last = events(tmp_path, "step")[-1]
    # the cosine ends at the new last epoch: the last step's LR is near the floor (1e-5),
    # where without the cut (epoch 2 of 6) it would still be ~7.5e-4
    assert last["lr"] < 3e-5


def test_control_stop_with_final_eval(tmp_path):
    proc = start_worker(tmp_path, ["faults.step_delay_s=0.1", "evaluation.eval_at_start=false"])
    assert wait_for(lambda: bool(events(tmp_path, "step")), 120)
    write_control(tmp_path, Control(seq=1, stop=True, final_eval=True))
    assert proc.wait(120) == EXIT_STOPPED
    assert events(tmp_path, "checkpoint")[-1]["reason"] == "stop"
    assert events(tmp_path, "eval") and events(tmp_path, "finished")[0]["reason"] == "stopped"


def test_eval_only_scores_a_checkpoint(tmp_path):
    assert run_worker(tmp_path / "a", ["training.epochs=1"]).returncode == EXIT_OK
    best = tmp_path / "a" / "checkpoints" / "best.pt"
    r = run_worker(tmp_path / "b", ["training.epochs=1"], "--resume", str(best), "--eval-only")
    assert r.returncode == EXIT_OK, r.stderr
    assert events(tmp_path / "b", "eval")[0]["knn"] == events(tmp_path / "a", "eval")[-1]["knn"]


def test_config_typo_and_missing_dataset_are_clear(tmp_path):
    r = run_worker(tmp_path / "typo", ["training.epocs=3"])
    assert r.returncode == EXIT_USAGE
    assert "training.epocs" in r.stderr and "demo_conservative.yaml" in r.stderr
    missing = tmp_path / "nodata"
    r = run_worker(tmp_path / "data", [f"data.datasets=[{{name: cifar10, path: {missing}}}]",
                                       "data.image_size=32"])
    assert r.returncode == EXIT_DATA
    fatal = events(tmp_path / "data", "fatal")[0]
    assert fatal["kind"] == "data" and str(missing) in fatal["message"]
    assert "download" in fatal["message"]


def test_compile_where_it_cannot_work_is_refused_not_ignored(tmp_path):
    # CPU compile needs a C++ compiler for inductor: with none reachable it is refused.
    cmd = worker_cmd(DEMO, tmp_path, [*TINY, "training.compile=true"])
    bare = {**env(), "CXX": "no-such-c++", "PATH": str(tmp_path)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=bare, cwd=ROOT)
    assert r.returncode == EXIT_USAGE, r.stderr
    assert "training.compile" in events(tmp_path, "fatal")[0]["message"]


def test_probe_prints_timing(tmp_path):
    r = run_worker(tmp_path, [], "--probe", "2")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ms_per_step"] > 0 and out["steps_per_epoch"] == 16


def test_sigint_checkpoints_too(tmp_path):
    proc = start_worker(tmp_path, ["faults.step_delay_s=0.2", "evaluation.eval_at_start=false"])
    assert wait_for(lambda: bool(events(tmp_path, "step")), 120)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == EXIT_STOPPED
    assert events(tmp_path, "checkpoint")[-1]["reason"] == "stop"
