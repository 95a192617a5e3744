"""Table tests of the pure policy: one row per trigger of orchestrator/policy/decide.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.runbook import load_runbook
from orchestrator.policy import (
    CheckpointRef,
    ConfigFacts,
    DecisionKind,
    NightHistory,
    Observation,
    classify_exit,
    decide,
    is_oom_text,
    kill_oom_evidence,
)

ROOT = Path(__file__).resolve().parents[2]
CONS = load_runbook(ROOT / "runbooks/conservative.yaml")
AGGR = load_runbook(ROOT / "runbooks/aggressive.yaml")
GB = 1024**3
NOW = 1_000_000.0
DEADLINE = NOW + 4 * 3600
K = DecisionKind

CKPTS = (
    CheckpointRef("/c/ckpt-e0001-s00000100.pt", 1, 100, 10.0),
    CheckpointRef("/c/ckpt-e0002-s00000200.pt", 2, 200, 20.0),
    CheckpointRef("/c/ckpt-e0003-s00000300.pt", 3, 300, 30.0),
)
FEATURES = {
    "contrastive": False,
    "fpn": False,
    "gradient_checkpointing": False,
    "flash_attention": True,
    "layerscale": True,
    "vicreg": True,
}


def hist(**kw: Any) -> NightHistory:
    facts = ConfigFacts(
        micro_batch=32,
        accum_steps=1,
        lr=1.5e-4,
        epochs=50,
        eval_frequency=10,
        features=dict(FEATURES),
        datasets=("cifar10", "stl10"),
    )
    base: dict[str, Any] = dict(
        attempts=1,
        attempts_without_progress=0,
        config=facts,
        base_effective_batch=32,
        checkpoints=CKPTS,
    )
    base.update(kw)
    return NightHistory(**base)


def aggr_hist(**kw: Any) -> NightHistory:
    feats = dict(FEATURES, contrastive=True, fpn=True, gradient_checkpointing=True)
    facts = ConfigFacts(
        micro_batch=16,
        accum_steps=4,
        lr=3e-4,
        epochs=40,
        eval_frequency=5,
        features=feats,
        datasets=("imagenet100",),
    )
    return hist(config=facts, base_effective_batch=64, **kw)


def live(**kw: Any) -> Observation:
    base: dict[str, Any] = dict(
        running=True,
        started_at=NOW - 3600,
        last_heartbeat_at=NOW - 1,
        phase="train",
        epoch=5,
        step=500,
        total_epochs=50,
        recent_step_s=1.0,
    )
    base.update(kw)
    return Observation(**base)


def ended(kind: str, **kw: Any) -> Observation:
    return replace(live(), running=False, exit_kind=kind, **kw)


def fast_epochs(n: int = 5, s: float = 60.0) -> dict[str, Any]:
    return dict(epoch=n, epoch_seconds=(s,) * n, epoch_end_ts=NOW - 10)


# --- live rows -----------------------------------------------------------------------------
LIVE_ROWS = [
    # (name, observation, history, expected kind, expected trigger)
    ("healthy", live(**fast_epochs()), hist(), K.CONTINUE, ""),
    ("hang in train", live(last_heartbeat_at=NOW - 181), hist(), K.RESTART, "hang"),
    (
        "slow eval is not a hang",
        live(phase="eval", last_heartbeat_at=NOW - 600),
        hist(),
        K.CONTINUE,
        "",
    ),
    (
        "checkpoint longer than its timeout",
        live(phase="checkpoint", last_heartbeat_at=NOW - 1201),
        hist(),
        K.RESTART,
        "hang",
    ),
    (
        "startup within its timeout",
        live(last_heartbeat_at=None, phase="startup", started_at=NOW - 800),
        hist(),
        K.CONTINUE,
        "",
    ),
    (
        "startup silent too long",
        live(last_heartbeat_at=None, phase="startup", started_at=NOW - 901),
        hist(),
        K.RESTART,
        "hang",
    ),
    ("memory over ceiling", live(tree_mem=29 * GB), hist(), K.RESTART, "memory"),
    # two ceilings: host 28 GB (the worker tree), device 92% of the device's own total
    (
        "device memory over the device ceiling",
        live(device_mem=75 * GB, device_total=80 * GB),
        hist(),
        K.RESTART,
        "memory",
    ),
    (
        "30 GB on an 80 GB GPU is not over the 28 GB host ceiling",
        live(device_mem=30 * GB, device_total=80 * GB, gpu_used=31 * GB, gpu_total=80 * GB),
        hist(),
        K.CONTINUE,
        "",
    ),
    (
        "NVML reading over the device ceiling",
        live(gpu_used=76 * GB, gpu_total=80 * GB),
        hist(),
        K.RESTART,
        "memory",
    ),
    (
        "a CPU's device reading is its RSS: no device ceiling, the host's covers it",
        live(device_mem=30 * GB),
        hist(),
        K.CONTINUE,
        "",
    ),
    (
        "MPS: the device ceiling is a fraction of recommendedMaxWorkingSetSize",
        live(device_mem=20 * GB, device_total=21 * GB),
        hist(),
        K.RESTART,
        "memory",
    ),
    ("swap growth", live(swap_growth=3 * GB), hist(), K.RESTART, "memory"),
    (
        "memory, OOM ladder exhausted: warn once",
        live(tree_mem=29 * GB),
        hist(rungs_used={"oom": 4}),
        K.CONTINUE,
        "memory",
    ),
    (
        "memory, exhausted and already warned",
        live(tree_mem=29 * GB, **fast_epochs()),
        hist(rungs_used={"oom": 4}, memory_warned=True),
        K.CONTINUE,
        "",
    ),
    ("too slow: cut epochs live", live(**fast_epochs(5, 400.0)), hist(), K.SET_EPOCHS, "slow"),
    ("deadline reached", live(), hist(), K.STOP_FOR_DEADLINE, "deadline"),
    (
        "stopping: only the hang rule",
        live(stop_reason="deadline", tree_mem=40 * GB),
        hist(),
        K.CONTINUE,
        "",
    ),
]


@pytest.mark.parametrize(
    ("name", "obs", "history", "kind", "trigger"), LIVE_ROWS, ids=[r[0] for r in LIVE_ROWS]
)
def test_live_rows(
    name: str, obs: Observation, history: NightHistory, kind: K, trigger: str
) -> None:
    deadline = NOW + 60 if name == "deadline reached" else DEADLINE
    d = decide(obs, history, CONS, NOW, deadline)
    assert (d.kind, d.trigger) == (kind, trigger)
    if d.kind is not K.CONTINUE:
        assert d.action and d.evidence


# --- hang timing: monotonic silence, data stalls, the run's own pace ------------------------
HANG_ROWS = [
    # (name, observation, expected kind) against CONS: step 180 s, factor 5, slow phase 1200 s
    (
        "supervisor's monotonic silence wins over a wall-clock jump",
        live(last_heartbeat_at=NOW - 5000, silent_s=3.0),
        K.CONTINUE,
    ),
    (
        "monotonic silence past the step timeout",
        live(last_heartbeat_at=NOW - 1, silent_s=181),
        K.RESTART,
    ),
    ("a data stall is judged by the step timeout", live(phase="data", silent_s=181), K.RESTART),
    ("loader start-up gets the slow-phase timeout", live(phase="loader", silent_s=900), K.CONTINUE),
    (
        "slow machine: 270 s steps (1.5x the timeout) are not a hang",
        live(silent_s=300, recent_step_s=270.0),
        K.CONTINUE,
    ),
    (
        "slow machine: a real stall is still caught (> 5 x 270 s)",
        live(silent_s=1400, recent_step_s=270.0),
        K.RESTART,
    ),
    (
        "fast steps never shrink the timeout below the runbook's",
        live(silent_s=100, recent_step_s=0.1),
        K.CONTINUE,
    ),
    (
        "the first step of an attempt gets the start-up timeout",
        live(silent_s=600, recent_step_s=None),
        K.CONTINUE,
    ),
    (
        "a first step past the start-up timeout is a hang",
        live(silent_s=901, recent_step_s=None),
        K.RESTART,
    ),
]


@pytest.mark.parametrize(("name", "obs", "kind"), HANG_ROWS, ids=[r[0] for r in HANG_ROWS])
def test_hang_rows(name: str, obs: Observation, kind: K) -> None:
    d = decide(obs, hist(), CONS, NOW, DEADLINE)
    assert d.kind is kind
    if kind is K.RESTART:
        assert d.trigger == "hang" and d.evidence["timeout_s"] >= 180


def test_adaptive_timeout_is_reported_in_the_evidence() -> None:
    d = decide(live(silent_s=1400, recent_step_s=270.0), hist(), CONS, NOW, DEADLINE)
    assert d.evidence["timeout_s"] == 1350.0 and d.evidence["recent_step_s"] == 270.0


def test_live_epoch_cut_is_state_it_carries_the_override() -> None:
    d = decide(live(**fast_epochs(5, 400.0)), hist(), CONS, NOW, DEADLINE)
    assert d.kind is K.SET_EPOCHS and d.overrides == {"training.epochs": 30}


def test_slow_restart_sends_its_epoch_count_as_an_override() -> None:
    d = decide(live(**fast_epochs(5, 1400.0)), hist(), CONS, NOW, DEADLINE)
    assert d.kind is K.RESTART and d.overrides == {"training.epochs": 14}


def test_a_cut_is_never_undone_by_the_slow_restart() -> None:
    # the cut (14) is in force in the night's overrides; the stopped worker still said 50
    facts = replace(hist().config, epochs=14)
    after = decide(
        ended("stopped", stop_reason="slow", total_epochs=50),
        hist(config=facts),
        CONS,
        NOW,
        DEADLINE,
    )
    assert after.overrides["training.epochs"] == 14


def test_slow_cut_takes_largest_rung_that_fits() -> None:
    # 4 h − 20 min reserve from an epoch end 10 s ago: 13,210 s; 400 s/epoch → 33 more → 38 fit
    d = decide(live(**fast_epochs(5, 400.0)), hist(), CONS, NOW, DEADLINE)
    assert d.evidence["epochs_that_fit"] == 38
    assert d.epochs == 30 and d.fallback  # the largest runbook rung (50, 40, 30) that fits


def test_slow_cut_without_runbook_rungs_cuts_to_what_fits() -> None:
    rb = CONS.model_copy(deep=True)
    rb.ladders.slow.epochs = []
    d = decide(live(**fast_epochs(5, 600.0)), hist(), rb, NOW, DEADLINE)
    assert d.kind is K.SET_EPOCHS and d.epochs == 27  # 13,210 // 600 = 22 more


def test_slow_below_the_smallest_rung_restarts_with_then_rung() -> None:
    # 9 epochs fit but the smallest rung is 30: fewer evals need a restart (graceful)
    obs = live(**fast_epochs(5, 1400.0))
    d = decide(obs, hist(), CONS, NOW, DEADLINE)
    assert (d.kind, d.trigger) == (K.RESTART, "slow") and d.evidence["epochs"] == 14
    after = decide(
        ended("stopped", stop_reason="slow", total_epochs=14), hist(), CONS, NOW, DEADLINE
    )
    assert after.overrides == {"evaluation.eval_frequency": 20, "training.epochs": 14}
    assert after.resume_from == CKPTS[-1].path


def test_slow_with_one_epoch_left_only_cuts() -> None:
    obs = live(epoch=5, total_epochs=8, epoch_seconds=(9000.0,) * 5, epoch_end_ts=NOW - 10)
    d = decide(obs, hist(), CONS, NOW, DEADLINE)
    assert (d.kind, d.epochs) == (K.SET_EPOCHS, 6)  # a restart would not pay off


# --- ended rows ----------------------------------------------------------------------------
ENDED_ROWS = [
    ("completed", ended("finished"), hist(), K.END_NIGHT, "completed"),
    (
        "stopped for deadline",
        ended("stopped", stop_reason="deadline"),
        hist(),
        K.END_NIGHT,
        "deadline",
    ),
    ("oom", ended("oom"), hist(), K.RESTART, "oom"),
    ("sigkill from outside, not memory", ended("killed"), hist(), K.RESTART, "killed"),
    ("memory trip", ended("memory"), hist(), K.RESTART, "memory"),
    ("oom ladder exhausted", ended("oom"), hist(rungs_used={"oom": 4}), K.END_NIGHT, "oom"),
    ("nonfinite", ended("nonfinite", fatal_step=250), hist(), K.RESTART, "nonfinite"),
    (
        "nonfinite ladder exhausted",
        ended("nonfinite", fatal_step=250),
        hist(rungs_used={"nonfinite": 3}),
        K.END_NIGHT,
        "nonfinite",
    ),
    ("feature", ended("feature", fatal_feature="flash_attention"), hist(), K.RESTART, "feature"),
    (
        "feature ladder exhausted",
        ended("feature", fatal_feature="flash_attention"),
        hist(disabled_features=("flash_attention",)),
        K.END_NIGHT,
        "feature",
    ),
    ("data", ended("data"), hist(), K.RESTART, "data"),
    ("data fallback used", ended("data"), hist(rungs_used={"data": 1}), K.END_NIGHT, "data"),
    ("hang killed", ended("hang"), hist(), K.RESTART, "hang"),
    ("crash", ended("crash", message="boom"), hist(), K.RESTART, "crash"),
    ("daemon stop resumes", ended("stopped", stop_reason="daemon"), hist(), K.RESTART, "resume"),
    ("config error", ended("config"), hist(), K.END_NIGHT, "config"),
    ("attempt limit", ended("oom"), hist(attempts=8), K.END_NIGHT, "limits"),
    ("no progress limit", ended("crash"), hist(attempts_without_progress=3), K.END_NIGHT, "limits"),
]


@pytest.mark.parametrize(
    ("name", "obs", "history", "kind", "trigger"), ENDED_ROWS, ids=[r[0] for r in ENDED_ROWS]
)
def test_ended_rows(
    name: str, obs: Observation, history: NightHistory, kind: K, trigger: str
) -> None:
    d = decide(obs, history, CONS, NOW, DEADLINE)
    assert (d.kind, d.trigger) == (kind, trigger)
    assert d.action
    if d.kind is K.END_NIGHT:
        assert d.reason


def test_failure_near_the_deadline_ends_the_night() -> None:
    d = decide(ended("oom"), hist(), CONS, NOW, NOW + 600)
    assert (d.kind, d.trigger) == (K.END_NIGHT, "deadline")


def test_oom_rung_keeps_effective_batch_or_scales_lr() -> None:
    d = decide(ended("oom"), hist(), CONS, NOW, DEADLINE)  # 32 → 24: 24 × 1, LR × 24/32
    assert d.overrides["data.batch_size"] == 24
    assert d.overrides["training.accumulation_steps"] == 1
    assert d.overrides["training.lr"] == pytest.approx(1.5e-4 * 24 / 32)
    assert "LR scaled" in d.effect and d.resume_from == CKPTS[-1].path
    d2 = decide(ended("oom"), hist(rungs_used={"oom": 1}), CONS, NOW, DEADLINE)  # 16 × 2
    assert d2.overrides == {"data.batch_size": 16, "training.accumulation_steps": 2}
    assert "effective batch 32 kept" in d2.effect


def test_aggressive_oom_pairs_scale_lr_at_72() -> None:
    d = decide(ended("oom"), aggr_hist(), AGGR, NOW, DEADLINE)
    assert d.overrides["data.batch_size"] == 12 and d.overrides["training.accumulation_steps"] == 6
    assert d.overrides["training.lr"] == pytest.approx(3e-4 * 72 / 64)
    assert "×72/64" in d.effect


def test_aggressive_oom_turns_checkpointing_back_on_first_where_preflight_took_it_off() -> None:
    base = aggr_hist()
    off = replace(base.config, features=dict(base.config.features, gradient_checkpointing=False))
    h = replace(base, config=off, overrides={"model.use_gradient_checkpointing": False})
    d = decide(ended("oom"), h, AGGR, NOW, DEADLINE)
    assert d.overrides == {"model.use_gradient_checkpointing": True}  # the batch is kept
    assert d.evidence["rung"] == 0


def test_batch_rung_not_smaller_than_current_is_skipped() -> None:
    facts = replace(hist().config, micro_batch=16, accum_steps=2)
    d = decide(ended("oom"), hist(config=facts), CONS, NOW, DEADLINE)
    assert d.overrides == {"data.num_workers": 2}
    assert d.evidence["rung"] == 2


def test_nonfinite_rolls_back_strictly_before_bad_step() -> None:
    # the worker reports steps completed: fatal at 299 means step 300 went bad
    d = decide(ended("nonfinite", fatal_step=299), hist(), CONS, NOW, DEADLINE)
    assert d.evidence["bad_step"] == 300
    assert d.resume_from == CKPTS[1].path  # step 200 < 300; step 300 is not "before"
    assert d.overrides == {"training.lr": 1e-4}
    d2 = decide(ended("nonfinite", fatal_step=50), hist(), CONS, NOW, DEADLINE)
    assert d2.resume_from is None  # no checkpoint before the bad step: from the start


def test_nonfinite_ladder_goes_lr_then_warmup_then_clip() -> None:
    seen = []
    for used in range(3):
        d = decide(
            ended("nonfinite", fatal_step=250),
            hist(rungs_used={"nonfinite": used}),
            CONS,
            NOW,
            DEADLINE,
        )
        seen.append(d.overrides)
    assert seen == [
        {"training.lr": 1e-4},
        {"training.warmup_epochs": 10},
        {"training.clip_grad": 1.0},
    ]


def test_feature_named_first_then_runbook_order() -> None:
    d = decide(ended("feature", fatal_feature="flash_attention"), aggr_hist(), AGGR, NOW, DEADLINE)
    assert d.overrides == {"model.use_flash_attention": False}
    d2 = decide(ended("feature", fatal_feature=None), aggr_hist(), AGGR, NOW, DEADLINE)
    assert d2.overrides == {"loss.use_contrastive": False}
    d3 = decide(
        ended("feature", fatal_feature=None),
        aggr_hist(disabled_features=("contrastive",)),
        AGGR,
        NOW,
        DEADLINE,
    )
    assert d3.overrides == {"model.use_fpn": False}


def test_dataset_fallback_keeps_the_rest() -> None:
    d = decide(ended("data"), aggr_hist(), AGGR, NOW, DEADLINE)
    assert list(d.overrides) == ["data.datasets"]
    assert "cifar10" in d.effect


# --- exit classification -------------------------------------------------------------------
OOM_TEXTS = [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
    "RuntimeError: CUDA error: out of memory",
    "RuntimeError: MPS backend out of memory (MPS allocated: 18 GB, other allocations: 1 GB, "
    "max allowed: 18.7 GB). Tried to allocate 256 MB on private pool.",
    "RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if ...",
    "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes.",
    "MemoryError",
    "RuntimeError: DataLoader worker (pid 4242) is killed by signal: Killed.",
]


@pytest.mark.parametrize("text", OOM_TEXTS)
def test_oom_texts(text: str) -> None:
    assert is_oom_text(text)


def test_killed_word_alone_is_not_oom() -> None:
    assert not is_oom_text("Killed\n") and not is_oom_text("ValueError: bad shape")


CLASSIFY_ROWS = [
    ((0, None, "", None, False), "finished"),
    ((3, None, "", None, True), "stopped"),
    ((10, {"kind": "oom", "message": "x"}, "", None, False), "oom"),
    ((11, None, "", None, False), "nonfinite"),
    ((12, {"kind": "feature", "message": "[fpn] x"}, "", None, False), "feature"),
    ((13, None, "", None, False), "data"),
    (
        (
            14,
            {"kind": "crash", "message": "RuntimeError: MPS backend out of memory"},
            "",
            None,
            False,
        ),
        "oom",
    ),
    ((14, None, "ValueError: nope", None, False), "crash"),
    ((-9, None, "", None, False), "killed"),
    ((137, None, "", None, False), "killed"),
    ((-9, None, "", "hang", True), "hang"),
    ((3, None, "", "memory", True), "memory"),
    ((1, None, "torch.OutOfMemoryError: CUDA out of memory.", None, False), "oom"),
    ((1, None, "Traceback\nKeyError: 'x'", None, False), "crash"),
    ((2, None, "", None, False), "config"),
    ((15, None, "", None, False), "resume"),
]


@pytest.mark.parametrize(("args", "kind"), CLASSIFY_ROWS)
def test_classify_exit(args: tuple[Any, ...], kind: str) -> None:
    got, message = classify_exit(*args)
    assert got == kind and message


def test_whole_card_usage_is_named_in_the_decision() -> None:
    """NVML matched none of the worker's pids (a container): the whole card's usage is what
    was compared, and the decision says so."""
    obs = live(gpu_used=76 * GB, gpu_total=80 * GB, gpu_whole_card=True)
    d = decide(obs, hist(), CONS, NOW, DEADLINE)
    assert d.trigger == "memory" and "whole-card usage" in d.action
    assert d.evidence["whole_card"] is True and d.evidence["device_ceiling_gb"] == 73.6
    own = decide(replace(obs, gpu_whole_card=False), hist(), CONS, NOW, DEADLINE)
    assert "whole-card" not in own.action and "whole_card" not in own.evidence
    # the worker's own reading is there: the card's other tenants do not shrink this batch
    shared = replace(obs, device_mem=10 * GB, device_total=80 * GB)
    assert decide(shared, hist(), CONS, NOW, DEADLINE).kind is K.CONTINUE


# --- a SIGKILL nobody here sent: memory trouble only with evidence --------------------------
KILL_ROWS = [
    # (name, memory before the kill, kernel OOM kills, exit kind, restart trigger, ladder)
    ("host memory near the host ceiling", dict(tree_mem=26 * GB), 0, "oom", "oom", "oom"),
    (
        "device memory near the device ceiling",
        dict(device_mem=70 * GB, device_total=80 * GB),
        0,
        "oom",
        "oom",
        "oom",
    ),
    (
        "system out of memory, the tree small",
        dict(tree_mem=3 * GB, sys_available=int(0.5 * GB), sys_total=16 * GB),
        0,
        "oom",
        "oom",
        "oom",
    ),
    ("the kernel counted an OOM kill", dict(tree_mem=2 * GB), 1, "oom", "oom", "oom"),
    (
        "memory far below every ceiling",
        dict(
            tree_mem=2 * GB,
            device_mem=10 * GB,
            device_total=80 * GB,
            sys_available=22 * GB,
            sys_total=32 * GB,
        ),
        0,
        "killed",
        "killed",
        None,
    ),
    ("no readings at all", {}, 0, "killed", "killed", None),
]


@pytest.mark.parametrize(
    ("name", "memory", "kernel", "kind", "trigger", "ladder"),
    KILL_ROWS,
    ids=[r[0] for r in KILL_ROWS],
)
def test_a_sigkill_is_an_oom_only_with_memory_evidence(
    name: str, memory: dict[str, Any], kernel: int, kind: str, trigger: str, ladder: str | None
) -> None:
    before = live(**memory)
    got, message = classify_exit(-9, None, "", oom_evidence=kill_oom_evidence(before, CONS, kernel))
    assert got == kind, message
    history = hist(overrides={"data.batch_size": 32})
    d = decide(ended(got, message=message), history, CONS, NOW, DEADLINE)
    assert (d.kind, d.trigger, d.ladder) == (K.RESTART, trigger, ladder)
    assert d.resume_from == CKPTS[-1].path
    if ladder is None:  # restarted as it was: same micro-batch, and no word of memory trouble
        assert d.overrides == {} and "oom" not in d.action.lower() and "OOM" not in message
        assert "as it was" in d.action
    else:
        assert d.overrides["data.batch_size"] < 32


def test_a_plain_kill_counts_toward_the_no_progress_limit() -> None:
    limit = CONS.limits.max_attempts_without_progress
    d = decide(ended("killed"), hist(attempts_without_progress=limit), CONS, NOW, DEADLINE)
    assert (d.kind, d.trigger) == (K.END_NIGHT, "limits")
