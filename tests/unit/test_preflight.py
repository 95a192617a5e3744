"""Preflight planning: micro-batch choice, epochs that fit, --apply into plan and state files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from orchestrator.core.state import Night, State, StateStore
from orchestrator.preflight import command as preflight
from orchestrator.preflight import probes
from orchestrator.preflight.features import costs_from_record
from orchestrator.preflight.fit import (
    GB,
    ApplyError,
    BatchTrial,
    apply_overrides,
    choose_micro,
    estimate_eval_s,
    fit_epochs,
    micro_candidates,
    night_seconds,
    prefer_checkpointing,
    probe_order,
    read_fits,
)


def test_candidates_keep_the_effective_batch() -> None:
    assert micro_candidates(64) == [1, 2, 4, 8, 16, 32, 64]
    grow, shrink = probe_order(32, 64)
    assert grow == [32, 64]
    assert shrink == [16, 8, 4, 2, 1]


def test_choose_micro_backs_off_from_oom_and_ceiling() -> None:
    ceiling = 10 * GB
    trials = [BatchTrial(16, 4 * GB), BatchTrial(32, int(9.5 * GB)), BatchTrial(64, None, oom=True)]
    # 32 peaks under the ceiling but inside the 10% margin: back off to 16
    assert choose_micro(trials, ceiling, 0.1) == 16
    assert choose_micro(trials, ceiling, 0.0) == 32
    assert choose_micro([BatchTrial(8, None, oom=True)], ceiling, 0.1) is None
    assert choose_micro([BatchTrial(8, None)], ceiling, 0.1) == 8


def test_fit_epochs_reserves_final_eval_and_margin_once() -> None:
    kw = dict(epoch_s=30.0, eval_s=8.0, eval_every=2, checkpoint_s=0.0, final_eval_s=30.0)
    # 240 s window, 10% margin: budget 240*0.9 - 30 - 8 = 178 s; 5 epochs cost 150 + 2*8 = 166
    assert fit_epochs(recipe_epochs=6, window_s=240, margin=0.1, **kw) == 5
    assert fit_epochs(recipe_epochs=3, window_s=240, margin=0.1, **kw) == 3  # capped at recipe
    assert fit_epochs(recipe_epochs=6, window_s=10, margin=0.1, **kw) == 1  # at least one
    night = night_seconds(5, 30.0, 8.0, 2, 0.0, 30.0)
    assert night == pytest.approx(5 * 30 + 3 * 8 + 30)
    assert night <= 240


def test_apply_to_plan_sets_only_matching_nights(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text(yaml.safe_dump({"name": "p", "nights": [
        {"name": "a", "config": "configs/demo_conservative.yaml", "runbook": "runbooks/demo.yaml"},
        {"name": "b", "config": "configs/demo_aggressive.yaml", "runbook": "runbooks/demo.yaml",
         "overrides": {"faults.nonfinite_at_step": 100}},
    ]}))  # fmt: skip
    over = {"data.batch_size": 32, "training.accumulation_steps": 2, "training.epochs": 4}
    assert apply_overrides(plan, "configs/demo_aggressive.yaml", over) == ["b"]
    doc = yaml.safe_load(plan.read_text())
    assert "overrides" not in doc["nights"][0]
    assert doc["nights"][1]["overrides"] == {"faults.nonfinite_at_step": 100, **over}
    with pytest.raises(ApplyError, match="no night"):
        apply_overrides(plan, "configs/overnight_training_conservative.yaml", over)
    with pytest.raises(ApplyError, match="does not exist"):
        apply_overrides(tmp_path / "missing.yaml", "x.yaml", over)


def test_apply_to_state_touches_pending_nights_only(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    cfg = "configs/demo_conservative.yaml"
    store.save(State(nights=[
        Night(name="done", index=0, config=cfg, runbook="r", status="succeeded"),
        Night(name="next", index=1, config=cfg, runbook="r", overrides={"training.lr": 1e-3}),
    ]))  # fmt: skip
    assert apply_overrides(store.path, cfg, {"training.epochs": 3}) == ["next"]
    state = store.load()
    assert state.nights[0].overrides == {}
    assert state.nights[1].overrides == {"training.lr": 1e-3, "training.epochs": 3}


@pytest.mark.slow
def test_preflight_probes_plans_and_applies(tmp_path: Path, monkeypatch, capsys) -> None:
    """The whole command over a recording probe: grows 32 -> 64, stops at the OOM, applies,
    then times every feature the recipe turns on, on and off, in one more worker call."""
    seen: list[tuple[list[str], list[str]]] = []
    # ms per step and peak GB of each --probe-variant, as a worker would report them
    variant_cost = {
        "model.use_flash_attention=false": (1250.0, 1.5),
        "model.use_gradient_checkpointing=true": (650.0, 0.6),
        "model.use_fpn=false": (450.0, 0.9),
        "loss.use_contrastive=false": (300.0, 0.8),
    }

    def fake_probe(args, steps, extra=None, variants=None):
        seen.append((list(extra or []), list(variants or [])))
        micro = int(extra[0].split("=")[1])
        if micro > 32:
            return {"oom": True}
        doc = {"ms_per_step": 500.0, "steps_per_epoch": 64, "epoch_seconds": 32.0,
               "img_per_s": 128.0, "device": "cpu", "memory": {"allocated": GB}}  # fmt: skip
        if variants:
            doc["variants"] = {
                v: {"ms_per_step": variant_cost[v][0],
                    "memory": {"allocated": int(variant_cost[v][1] * GB)}}
                for v in variants
            }  # fmt: skip
        return doc

    monkeypatch.setattr(probes, "run_probe", fake_probe)
    plan = tmp_path / "demo.yaml"
    plan.write_text(Path("configs/plans/demo.yaml").read_text())
    args = argparse.Namespace(config="configs/demo_aggressive.yaml", runbook=None, overrides=[],
                              probe_steps=2, window="5m", margin=0.1, apply=str(plan),
                              state_dir=str(tmp_path / "var"))  # fmt: skip
    assert preflight.cmd_preflight(args) == 0
    # the demo's aggressive recipe turns gradient checkpointing on: probed without it first,
    # and since its micro-batch fits that way, no probe with it is needed
    off = "model.use_gradient_checkpointing=false"
    # then ONE call at the chosen micro-batch times the plan and each feature switched the
    # other way: flash, FPN, contrastive off; checkpointing (off in the plan) on
    assert seen == [(["data.batch_size=32", "training.accumulation_steps=2", off], []),
                    (["data.batch_size=64", "training.accumulation_steps=1", off], []),
                    (["data.batch_size=32", "training.accumulation_steps=2", off],
                     list(variant_cost))]  # fmt: skip
    night = yaml.safe_load(plan.read_text())["nights"][1]
    assert night["overrides"]["data.batch_size"] == 32
    assert night["overrides"]["training.accumulation_steps"] == 2
    assert night["overrides"]["model.use_gradient_checkpointing"] is False
    # 300 s * 0.9 - 30 s reserve - baseline eval: all 6 epochs of 32 s fit with their evals
    assert night["overrides"]["training.epochs"] == 6
    fits = read_fits(tmp_path / "var")
    assert fits and fits[0]["epochs"] == night["overrides"]["training.epochs"]
    assert (fits[0]["ms_flash_on"], fits[0]["ms_flash_off"]) == (500.0, 1250.0)
    assert fits[0]["speedup_vs_no_flash"] == 2.5
    costs = {c.feature: c for c in costs_from_record(fits[0])}
    assert list(costs) == ["flash_attention", "gradient_checkpointing", "fpn", "contrastive"]
    # checkpointing is off in the plan: its "on" side is the variant, "off" the plan itself
    ckpt = costs["gradient_checkpointing"]
    assert not ckpt.planned_on and (ckpt.on.ms_per_step, ckpt.off.ms_per_step) == (650.0, 500.0)
    assert ckpt.on.peak == int(0.6 * GB) and ckpt.off.peak == GB
    assert costs["fpn"].speed_factor == pytest.approx(450 / 500)
    assert costs["contrastive"].off.peak == int(0.8 * GB)
    assert json.dumps(fits[0])
    # the printed feature table: one row per feature with the factor
    out = capsys.readouterr().out
    assert "what each feature costs" in out
    assert "2.50x" in out and "0.77x" in out and "0.90x" in out and "0.60x" in out


def test_preflight_without_apply_still_records_the_feature_costs(
    tmp_path: Path, monkeypatch
) -> None:
    def fake_probe(args, steps, extra=None, variants=None):
        doc = {"ms_per_step": 400.0, "steps_per_epoch": 64, "epoch_seconds": 25.6,
               "img_per_s": 160.0, "device": "cpu", "memory": {"allocated": GB}}  # fmt: skip
        if variants:  # flash attention off runs out of memory here
            doc["variants"] = {"model.use_flash_attention=false": {"oom": True}}
        return doc

    monkeypatch.setattr(probes, "run_probe", fake_probe)
    # the worker's --check document (trainer/runtime/check.py's shape) for a CPU with the synthetic
    # set
    facts = {"ok": True, "device": {"device": "cpu", "type": "cpu"},
             "datasets": [{"name": "synthetic", "key": "synthetic", "status": "ok",
                           "description": "4096 generated images"}]}  # fmt: skip
    monkeypatch.setattr(preflight, "worker_facts", lambda config, overrides: facts)
    args = argparse.Namespace(config="configs/demo_conservative.yaml", runbook=None,
                              overrides=[], probe_steps=2, window="5m", margin=0.1, apply=None,
                              state_dir=str(tmp_path / "var"))  # fmt: skip
    assert preflight.cmd_preflight(args) == 0
    (row,) = read_fits(tmp_path / "var")
    assert row["applied_to"] is None and row["source"] == "preflight"
    (flash,) = costs_from_record(row)
    assert flash.feature == "flash_attention" and flash.off.oom and flash.speed_factor is None
    assert row["speedup_vs_no_flash"] is None and row["ms_flash_off"] is None


def test_checkpointing_stays_only_when_it_must_or_is_faster() -> None:
    assert not prefer_checkpointing((32, 500.0), (None, None))  # nothing fits with it either
    assert not prefer_checkpointing((32, 500.0), (64, 650.0))  # fits without: the usual case
    assert prefer_checkpointing((None, None), (16, 900.0))  # only fits with it
    assert prefer_checkpointing((8, 700.0), (32, 600.0))  # fits without, but slower that way
    assert not prefer_checkpointing((8, 500.0), (32, 600.0))


@pytest.mark.parametrize(
    ("ms_without", "checkpointing", "micro"), [(700.0, True, 32), (450.0, False, 16)]
)
def test_a_recipe_that_fits_only_smaller_without_checkpointing_takes_the_faster_fit(
    tmp_path: Path, monkeypatch, ms_without: float, checkpointing: bool, micro: int
) -> None:
    """Without checkpointing only micro-batch 16 fits (32 is over the ceiling); with it, 32
    fits. The plan keeps whichever is faster per optimizer step, and says so."""
    seen: list[list[str]] = []

    def fake_probe(args, steps, extra=None, variants=None):
        seen.append(list(extra or []))
        m = int(extra[0].split("=")[1])
        off = "model.use_gradient_checkpointing=false" in extra
        limit = 16 if off else 32
        if m > limit:
            return {"oom": True}
        ms = ms_without if off else 600.0
        return {"ms_per_step": ms, "steps_per_epoch": 64, "epoch_seconds": ms * 64 / 1000,
                "img_per_s": 64e3 / ms, "device": "cpu", "memory": {"allocated": GB}}  # fmt: skip

    monkeypatch.setattr(probes, "run_probe", fake_probe)
    args = argparse.Namespace(config="configs/demo_aggressive.yaml", runbook=None, overrides=[],
                              probe_steps=2, window="30m", margin=0.1, apply=None,
                              state_dir=str(tmp_path / "var"))  # fmt: skip
    cfg = preflight.load_config(args.config, [])
    rb = preflight.load_runbook(preflight.default_runbook_for(args.config))
    fit, why = probes.plan_night(args, cfg, rb, 1800.0)
    assert fit is not None, why
    assert (fit.checkpointing, fit.micro, fit.accum) == (checkpointing, micro, 64 // micro)
    assert ("model.use_gradient_checkpointing" in fit.overrides()) is (not checkpointing)
    assert any("model.use_gradient_checkpointing=false" not in e for e in seen)  # both probed
    assert fit.trials_checkpointed  # the other probes are kept for the table


def test_eval_reserve_adds_the_linear_probe_bound() -> None:
    """Forward passes over the eval images at a third of the step's cost per image, plus the
    worker's bound for the probe (``linear_probe_bound_s`` of ``--probe``)."""
    assert estimate_eval_s(100.0, 2048, 0.0) == pytest.approx(2048 / 300.0)
    assert estimate_eval_s(100.0, 2048, 4.5) == pytest.approx(2048 / 300.0 + 4.5)


@pytest.mark.parametrize(
    ("memory", "micro"),
    [
        # a GPU reports its total: probed up to 92% of 80 GB (less the margin), not to the
        # runbook's 4 GB host ceiling — 64 samples at 1 GB each fit
        ({"total": 80 * GB}, 64),
        # a CPU reports no device total: its peak is the process RSS, under the host ceiling
        ({}, 2),
    ],
)
def test_probes_grow_to_the_device_ceiling_on_a_device_and_the_host_one_on_a_cpu(
    tmp_path: Path, monkeypatch, memory: dict[str, int], micro: int
) -> None:
    def fake_probe(args, steps, extra=None, variants=None):
        m = int(extra[0].split("=")[1])
        peak = {"peak": m * GB} if memory else {"allocated": m * GB}
        return {"ms_per_step": 100.0, "steps_per_epoch": 64, "epoch_seconds": 6.4,
                "img_per_s": 640.0, "device": "cuda:0" if memory else "cpu",
                "memory": {**peak, **memory}}  # fmt: skip

    monkeypatch.setattr(probes, "run_probe", fake_probe)
    args = argparse.Namespace(config="configs/demo_conservative.yaml", runbook=None, overrides=[],
                              probe_steps=2, window="30m", margin=0.1, apply=None,
                              state_dir=str(tmp_path / "var"))  # fmt: skip
    cfg = preflight.load_config(args.config, ["data.batch_size=8", "training.accumulation_steps=8"])
    rb = preflight.load_runbook(preflight.default_runbook_for(args.config))
    assert rb.memory.ceiling_gb == 4 and cfg.effective_batch == 64
    fit, why = probes.plan_night(args, cfg, rb, 1800.0)
    assert fit is not None, why
    assert (fit.micro, fit.accum) == (micro, 64 // micro)


def test_a_probe_stopped_early_keeps_the_configurations_it_measured() -> None:
    """The worker prints each configuration as it is measured: a probe cut after the flash
    variant still gives flash attention's factor; the rest read "not measured"."""
    from orchestrator.night.start_probe import bound_s
    from orchestrator.preflight.features import costs_from_probe, probe_doc

    toggles = [("flash_attention", "model.use_flash_attention", True),
               ("fpn", "model.use_fpn", True)]  # fmt: skip
    stdout = "\n".join([
        "loading...",
        json.dumps({"variant": None, "ms_per_step": 80.0, "memory": {"peak": 3 * GB}}),
        json.dumps({"variant": "model.use_flash_attention=false", "ms_per_step": 200.0,
                    "memory": {"peak": 5 * GB}}),
        '{"variant": "model.use_fpn=false", "ms_per',  # cut mid-line
    ])  # fmt: skip
    doc = probe_doc(stdout)
    assert doc is not None
    flash, fpn = costs_from_probe(doc, toggles)
    assert flash.speed_factor == pytest.approx(2.5) and flash.off.peak == 5 * GB
    assert fpn.speed_factor is None and "cut short" in (fpn.off.error or "")
    assert probe_doc("no json at all\n") is None  # nothing measured: no document
    # the night-start probe's bound: 5% of the window, within 45 s .. 3 min
    assert (bound_s(8 * 60), bound_s(1800), bound_s(8 * 3600)) == (45.0, 90.0, 180.0)
