"""The real worker as a subprocess: contract, exact resume, corrupt checkpoints, faults, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
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
from trainer.checkpoint import store as ck
from trainer.events import (
    EXIT_DATA,
    EXIT_FEATURE,
    EXIT_NONFINITE,
    EXIT_OK,
    EXIT_OOM,
    EXIT_STOPPED,
    EXIT_USAGE,
    FAULTS_FIRED_FILE,
    Control,
    write_control,
)

pytestmark = pytest.mark.slow


def test_completed_run_honours_the_event_contract(tmp_path):
    r = run_worker(tmp_path)
    assert r.returncode == EXIT_OK, r.stderr
    evs = events(tmp_path)
    types = [e["type"] for e in evs if e["type"] != "heartbeat"]  # beats run from start-up
    assert types[0] == "started" and types[-1] == "finished"
    assert all({"v", "type", "ts"} <= set(e) for e in evs)
    before = evs[: [e["type"] for e in evs].index("started")]
    assert {e["phase"] for e in before} <= {"startup", "data", "checkpoint"}  # set-up only
    started = events(tmp_path, "started")[0]
    assert started["world_size"] == 1 and started["global_batch"] == 16
    assert started["features"]["flash_attention"].startswith("on")
    assert started["steps_per_epoch"] == 256 // 16
    evals = events(tmp_path, "eval")
    assert [e["epoch"] for e in evals] == [0, 1, 2]  # random encoder first
    for e in evals:
        assert set(e["knn"]) == {"1", "5", "20"} and all(0 <= v <= 1 for v in e["knn"].values())
        assert e["feature_std"] > 0 and e["effective_rank"] > 1
        assert e["feature_variance"] > 0 and e["contrastive_accuracy"] is None  # no NT-Xent
    steps = events(tmp_path, "step")
    assert [s["step"] for s in steps] == list(range(1, 33))
    assert all(len(s["loss_levels"]) == 3 and s["grad_norm"] > 0 for s in steps)
    assert [e["epoch"] for e in events(tmp_path, "epoch_end")] == [1, 2]
    assert len(events(tmp_path, "heartbeat")) >= 1
    resolved = yaml.safe_load((tmp_path / "config.resolved.yaml").read_text())
    assert resolved["data"]["batch_size"] == 16 and resolved["model"]["depth"] == 2
    assert len(ck.list_checkpoints(tmp_path / "checkpoints")) == 2
    assert (tmp_path / "checkpoints" / "best.pt").exists()


@pytest.mark.parametrize(
    "where",
    ["host", "device"],
    ids=["colour-on-host", "colour-on-device"],  # trainer/data/photometric.py
)
def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path, where):
    full, cut = tmp_path / "full", tmp_path / "cut"
    sets = ["training.epochs=3", f"data.transforms.photometric={where}"]  # demo: upstream spelling
    if where == "device":  # jitter drawn on the host, applied by the prefetcher, 2 workers
        sets += ["data.transforms.color_jitter=1.0", "data.num_workers=2"]
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
    assert events(full, "started")[0]["features"]["photometric"] == where


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


@pytest.mark.parametrize(
    "sets,code,kind,feature",
    [
        (["faults.oom_above_micro_batch=8"], EXIT_OOM, "oom", None),
        (["faults.nonfinite_at_step=3"], EXIT_NONFINITE, "nonfinite", None),
        (["faults.raise_in_feature=layerscale"], EXIT_FEATURE, "feature", "layerscale"),
    ],
)
def test_fault_injection_gives_its_kind_and_exit_code(tmp_path, sets, code, kind, feature):
    r = run_worker(tmp_path, [*sets, "evaluation.eval_at_start=false"])
    assert r.returncode == code, r.stderr
    fatal = events(tmp_path, "fatal")
    assert len(fatal) == 1 and fatal[0]["kind"] == kind and fatal[0]["feature"] == feature
    if kind == "oom":  # an injected OOM names the device it ran on, not always CUDA
        dev = events(tmp_path, "started")[0]["device"]
        assert f"{dev.split(':')[0].upper()} out of memory on {dev}." in fatal[0]["message"]


def test_nonfinite_is_caught_before_the_optimizer_step_and_passes_on_restart(tmp_path):
    sets = ["faults.nonfinite_at_step=20", "evaluation.eval_at_start=false"]
    assert run_worker(tmp_path, sets).returncode == EXIT_NONFINITE
    assert max(e["step"] for e in events(tmp_path, "step")) == 19
    r = run_worker(tmp_path, sets, "--resume", "auto")  # from epoch 1 (step 16)
    assert r.returncode == EXIT_OK, r.stderr
    assert max(e["step"] for e in events(tmp_path, "step")) == 32


def test_feature_fault_only_fires_while_the_feature_is_on(tmp_path):
    sets = ["faults.raise_in_feature=fpn", "evaluation.eval_at_start=false", "training.epochs=1"]
    r = run_worker(tmp_path / "on", sets, config=DEMO_AGGRESSIVE)
    assert r.returncode == EXIT_FEATURE
    assert events(tmp_path / "on", "fatal")[0]["feature"] == "fpn"
    r = run_worker(tmp_path / "off", [*sets, "model.use_fpn=false"], config=DEMO_AGGRESSIVE)
    assert r.returncode == EXIT_OK, r.stderr


def test_hang_stops_progress_and_heartbeats(tmp_path):
    proc = start_worker(tmp_path, ["faults.hang_at_step=4", "evaluation.eval_at_start=false"])
    try:
        # the fault is recorded as fired just before its last heartbeat and the freeze
        fired = tmp_path / FAULTS_FIRED_FILE
        assert wait_for(lambda: fired.exists() and "hang" in fired.read_text(), 120)
        assert events(tmp_path, "step")[-1]["step"] == 3
        time.sleep(1.0)  # for that heartbeat, and one the heartbeat thread had begun
        n = len(events(tmp_path))
        time.sleep(3.0)  # heartbeat period is 0.5 s: a live worker would have written ~6
        assert len(events(tmp_path)) == n and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_control_file_cuts_epochs_live(tmp_path):
    proc = start_worker(
        tmp_path,
        ["training.epochs=6", "faults.step_delay_s=0.05", "evaluation.eval_at_start=false"],
    )
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
    r = run_worker(
        tmp_path / "b", ["training.epochs=1"], "--resume", str(best), "--eval-only", "--pictures"
    )
    assert r.returncode == EXIT_OK, r.stderr
    assert events(tmp_path / "b", "eval")[0]["knn"] == events(tmp_path / "a", "eval")[-1]["knn"]
    # the end of the run pictured its best checkpoint, and --pictures the one it was given
    (end,), (again,) = events(tmp_path / "a", "pictures"), events(tmp_path / "b", "pictures")
    sha = json.loads(Path(f"{best}.json").read_text())["sha256"]
    assert end["checkpoint"] == again["checkpoint"] == str(best) and not end["problem"]
    assert end["sha256"] == again["sha256"] == sha and end["indices"] == again["indices"]
    with np.load(end["path"]) as a, np.load(again["path"]) as b:
        np.testing.assert_array_equal(a["attention"], b["attention"])  # the same weights


def test_config_typo_and_missing_dataset_are_clear(tmp_path):
    r = run_worker(tmp_path / "typo", ["training.epocs=3"])
    assert r.returncode == EXIT_USAGE
    assert "training.epocs" in r.stderr and "demo_conservative.yaml" in r.stderr
    missing = tmp_path / "nodata"
    r = run_worker(
        tmp_path / "data",
        [f"data.datasets=[{{name: cifar10, path: {missing}}}]", "data.image_size=32"],
    )
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
    assert out["linear_probe_bound_s"] > 0  # preflight reserves it in every evaluation
    # with variants: each timed in the same process after the config as given, a line each as
    # it is measured; one that cannot run (a batch larger than the epoch) is reported, not fatal
    variants = ["model.use_flash_attention=false", "model.use_fpn=true", "data.batch_size=4096"]
    extra = [a for v in variants for a in ("--probe-variant", v)]
    r = run_worker(tmp_path / "off", ["evaluation.linear_probe.enabled=false"], "--probe", "1",
                   "--probe-warmup", "1", *extra)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.strip().splitlines() if line.startswith("{")]
    assert [doc.get("variant", "all") for doc in lines] == [None, *variants, "all"]
    out = lines[-1]
    assert out["linear_probe_bound_s"] == 0.0
    for v in variants[:2]:
        assert out["variants"][v]["ms_per_step"] > 0 and out["variants"][v]["memory"]["allocated"]
        assert out["variants"][v]["micro_batch"] == 16
    assert "epoch size" in out["variants"][variants[2]]["error"]


def test_sigint_checkpoints_too(tmp_path):
    proc = start_worker(tmp_path, ["faults.step_delay_s=0.2", "evaluation.eval_at_start=false"])
    assert wait_for(lambda: bool(events(tmp_path, "step")), 120)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == EXIT_STOPPED
    assert events(tmp_path, "checkpoint")[-1]["reason"] == "stop"


# -- every fallback holds: the worker side ---------------------------------------------------
def test_fp16_overflow_steps_are_skipped_counted_and_the_run_completes(tmp_path):
    sets = [
        "training.precision=fp16",
        "faults.grad_overflow_at_step=5",
        "faults.grad_overflow_steps=3",
        "evaluation.eval_at_start=false",
    ]
    r = run_worker(tmp_path, sets)
    assert r.returncode == EXIT_OK, r.stderr
    assert events(tmp_path, "started")[0]["precision"] == "fp16"
    steps = events(tmp_path, "step")
    assert [s["step"] for s in steps] == list(range(1, 30))  # 32 batches, 3 skipped
    before = [s for s in steps if s["step"] < 5]
    after = [s for s in steps if s["step"] >= 5]
    assert all(s["overflow_steps"] == 0 for s in before)
    assert all(s["overflow_steps"] == 3 for s in after)
    # the GradScaler backed off once per overflow (it may grow again only after 2000 steps)
    assert after[0]["loss_scale"] == before[-1]["loss_scale"] / 8
    assert all(s["step_s"] > 0 for s in steps)
    assert [e["steps"] for e in events(tmp_path, "epoch_end")] == [13, 16]
    assert not events(tmp_path, "fatal")


def test_more_consecutive_overflows_than_allowed_is_nonfinite_then_passes(tmp_path):
    sets = [
        "faults.grad_overflow_at_step=20",
        "faults.grad_overflow_steps=3",
        "training.max_consecutive_overflows=2",
        "evaluation.eval_at_start=false",
    ]
    r = run_worker(tmp_path, sets)  # fp32: a non-finite grad norm without a scaler
    assert r.returncode == EXIT_NONFINITE, r.stderr
    fatal = events(tmp_path, "fatal")[0]
    assert fatal["kind"] == "nonfinite" and "3 consecutive gradient overflows" in fatal["message"]
    assert max(e["step"] for e in events(tmp_path, "step")) == 19
    r = run_worker(tmp_path, sets, "--resume", "auto")  # one-shot: the restart passes it
    assert r.returncode == EXIT_OK, r.stderr


def test_a_cut_survives_a_restart_and_the_lr_stays_continuous(tmp_path):
    first = tmp_path / "first"
    proc = start_worker(
        first,
        [
            "training.epochs=6",
            "faults.step_delay_s=0.15",
            "evaluation.eval_at_start=false",
            "checkpoint.every_n_steps=4",
            "checkpoint.keep_last_k=20",
        ],
    )
    assert wait_for(lambda: any(e["step"] >= 6 for e in events(first, "step")), 120)
    write_control(first, Control(seq=1, epochs=3))
    assert wait_for(lambda: any(e["step"] >= 21 for e in events(first, "step")), 120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == EXIT_STOPPED
    stop = events(first, "checkpoint")[-1]
    last = events(first, "step")[-1]
    assert last["step"] == stop["step"]
    # the supervisor's override now says 3: the same curve continues exactly
    same = tmp_path / "same"
    r = run_worker(
        same, ["training.epochs=3", "evaluation.eval_at_start=false"], "--resume", stop["path"]
    )
    assert r.returncode == EXIT_OK, r.stderr
    assert events(same, "started")[0]["epochs"] == 3
    assert {e["total_epochs"] for e in events(same, "epoch_end")} == {3}
    s0 = events(same, "step")[0]
    slope = abs(events(first, "step")[-2]["lr"] - last["lr"])
    assert abs(s0["lr"] - last["lr"]) <= 1.5 * slope + 1e-9  # one step's change, no jump
    assert events(same, "step")[-1]["lr"] < 3e-5  # ends at the floor at epoch 3
    # a rollback to a checkpoint from before the cut: a cut is added at the resume position
    early = ck.list_checkpoints(first / "checkpoints")[-1]
    pre = ck.read_sidecar(early)
    assert pre["total_epochs"] == 6 and pre["step"] == 4
    back = tmp_path / "back"
    r = run_worker(
        back, ["training.epochs=3", "evaluation.eval_at_start=false"], "--resume", str(early)
    )
    assert r.returncode == EXIT_OK, r.stderr
    assert events(back, "started")[0]["epochs"] == 3
    ref = {e["step"]: e["lr"] for e in events(first, "step")}
    s0 = events(back, "step")[0]
    assert s0["step"] == 5 and s0["lr"] == pytest.approx(ref[5], rel=1e-6)
    assert [e["epoch"] for e in events(back, "epoch_end")] == [1, 2, 3]


def test_time_checkpoints_keep_a_nan_from_rolling_back_to_step_zero(tmp_path):
    sets = [
        "faults.nonfinite_at_step=12",
        "faults.step_delay_s=0.1",
        "checkpoint.every_minutes=0.005",
        "experiment.save_frequency=5",
        "evaluation.eval_at_start=false",
    ]
    assert run_worker(tmp_path, sets).returncode == EXIT_NONFINITE
    saves = events(tmp_path, "checkpoint")
    assert saves and {c["reason"] for c in saves} == {"time"} and all(c["verified"] for c in saves)
    assert max(c["step"] for c in saves) >= 8  # mid-epoch 1, before any epoch save
    r = run_worker(tmp_path, sets, "--resume", "auto")
    assert r.returncode == EXIT_OK, r.stderr
    assert events(tmp_path, "resumed")[0]["step"] >= 8


def test_fpn_off_resumes_partially_and_contrastive_off_under_cjepa_trains(tmp_path):
    sets = [
        "evaluation.eval_at_start=false",
        "training.epochs=2",
        "faults.raise_in_feature=fpn",
        "faults.raise_in_feature_after_step=6",
        "checkpoint.every_n_steps=2",
    ]
    first = tmp_path / "first"
    r = run_worker(first, sets, config=DEMO_AGGRESSIVE)
    assert r.returncode == EXIT_FEATURE, r.stderr
    assert events(first, "fatal")[0]["feature"] == "fpn"
    assert max(e["step"] for e in events(first, "step")) == 5  # armed from step 6 on
    nxt = tmp_path / "next"
    r = run_worker(
        nxt,
        [*sets, "model.use_fpn=false", "loss.use_contrastive=false"],
        "--resume",
        str(first),
        config=DEMO_AGGRESSIVE,
    )
    assert r.returncode == EXIT_OK, r.stderr
    partial = events(nxt, "resume_partial")
    assert len(partial) == 1 and partial[0]["optimizer"] == "restored"
    assert any(k.startswith("encoder.fpn.") for k in partial[0]["dropped"])
    started = events(nxt, "started")[0]
    assert started["start_step"] == 4 and started["features"]["fpn"] == "off"
    assert started["features"]["contrastive"] == "off"
    assert not any(e["type"] == "warning" for e in events(nxt))


def test_contrastive_accuracy_is_in_the_eval_event_when_the_term_is_on(tmp_path):
    r = run_worker(tmp_path, ["training.epochs=1"], config=DEMO_AGGRESSIVE)
    assert r.returncode == EXIT_OK, r.stderr
    evals = events(tmp_path, "eval")
    assert [e["epoch"] for e in evals] == [0, 1]
    for e in evals:  # top-1 of the positive pair among a micro-batch of 16: chance is 1/16
        assert 0.0 <= e["contrastive_accuracy"] <= 1.0 and e["feature_variance"] > 0
    assert evals[-1]["contrastive_accuracy"] > 1 / 16


def test_heartbeats_carry_step_time_and_best_follows_the_metric(tmp_path):
    r = run_worker(
        tmp_path, ["faults.step_delay_s=0.3", "evaluation.eval_at_start=false", "training.epochs=2"]
    )
    assert r.returncode == EXIT_OK, r.stderr
    beats = events(tmp_path, "heartbeat")
    assert "train" in {b["phase"] for b in beats}
    timed = [b["step_s"] for b in beats if b.get("step_s") is not None]
    assert timed and all(t >= 0.3 for t in timed)
    assert all("mono" in e for e in events(tmp_path))
    bests = events(tmp_path, "best")
    evals = {e["epoch"]: e["knn"]["20"] for e in events(tmp_path, "eval")}
    assert bests and bests[0]["metric"] == "knn" and bests[0]["value"] == evals[1]
    top = max(evals.values())
    assert bests[-1]["value"] == top
    assert ck.read_sidecar(tmp_path / "checkpoints" / "best.pt")["value"] == top
