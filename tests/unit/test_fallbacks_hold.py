"""Worker pieces that keep a fallback working: kernel choices per device, precision, the
overflow-skipping step, partial resume after a feature is switched off, verified checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils import _foreach_utils as fu

import trainer.runtime.device as device_mod
from tests.unit.test_model_switches import cfg_of, make_batch
from trainer.checkpoint import store as ck
from trainer.checkpoint.restore import load_model_state, load_optimizer_state, optimizer_param_names
from trainer.config import ConfigError
from trainer.model.hjepa import build_model
from trainer.runtime.device import BF16, FP16, FP32, kernels_for, select_precision
from trainer.train.step import TrainStep

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


# -- kernels -----------------------------------------------------------------------------------
def test_mps_gets_no_flag_torch_does_not_support_there():
    mps = torch.device("mps")  # a device object only: nothing is allocated on it
    k = kernels_for(mps, FP16)
    foreach_ok = fu._device_has_foreach_support(mps)  # torch's own rule
    assert foreach_ok is False  # torch 2.14: clip_grad_norm_(foreach=True) raises on MPS
    assert k.foreach is foreach_ok
    kwargs = k.adamw_kwargs()
    assert kwargs.get("foreach", False) <= foreach_ok
    assert kwargs.get("fused", False) <= ("mps" in fu._get_fused_kernels_supported_devices())
    assert k.autocast().fast_dtype == torch.float16 and k.precision.needs_scaler


def test_kernels_without_foreach_compute_the_same_numbers(monkeypatch):
    calls: list[object] = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(
        torch.nn.utils,
        "clip_grad_norm_",
        lambda *a, **kw: calls.append(kw.get("foreach")) or real(*a, **kw),
    )
    fast, slow = kernels_for(CPU), kernels_for(torch.device("mps"))
    a = [torch.randn(5, 3), torch.randn(7)]
    b = [t.clone() for t in a]
    for t in (*a, *b):
        t.grad = torch.ones_like(t) * 3
    torch.testing.assert_close(fast.clip_grad_norm_(a, 1.0), slow.clip_grad_norm_(b, 1.0))
    assert calls == [True, False]  # the MPS choice never passes foreach=True
    torch.testing.assert_close(fast.norm(a), slow.norm(a))
    src = [torch.randn(5, 3), torch.randn(7)]
    fast.lerp_(a, src, 0.25)
    slow.lerp_(b, src, 0.25)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_no_foreach_or_fused_flag_is_hard_coded_outside_device_py():
    pattern = re.compile(r"foreach\s*=\s*True|fused\s*=\s*True|torch\._foreach_")
    offenders = [
        p.name
        for p in (ROOT / "trainer").glob("*.py")
        if p.name != "device.py" and pattern.search(p.read_text())
    ]
    assert offenders == []


# -- precision ---------------------------------------------------------------------------------
def test_forced_precision_and_use_amp(monkeypatch):
    assert select_precision(CPU, True, "fp16") is FP16
    # auto = the device's choice (bf16 on a CPU with bf16 instructions, else fp32)
    for native, want in ((True, BF16), (False, FP32)):
        monkeypatch.setattr(device_mod, "cpu_native_bf16", lambda n=native: n)
        assert select_precision(CPU, True, "auto") is want
    assert select_precision(CPU, True, "fp32") is FP32
    assert select_precision(CPU, False, "auto") is FP32
    assert select_precision(CPU, True, "bf16").dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="use_amp: false contradicts"):
        select_precision(CPU, False, "fp16")
    assert kernels_for(CPU, FP16).scaler() is not None
    assert kernels_for(CPU, FP32).scaler() is None


# -- the step: overflow is skipped, not fatal ---------------------------------------------------
def _step(precision=FP16) -> tuple[TrainStep, object]:
    cfg = cfg_of(training={"precision": "fp16"} if precision is FP16 else {})
    model = build_model(cfg)
    return TrainStep(model, cfg, CPU, precision), make_batch(cfg)


@pytest.mark.parametrize("precision", [FP16, FP32], ids=["fp16-scaler", "fp32-no-scaler"])
def test_gradient_overflow_skips_the_step_and_backs_off_the_scale(precision):
    step, batch = _step(precision)
    weights = {n: p.clone() for n, p in step.model.named_parameters()}
    scale = step.loss_scale()
    step.overflow_next = True
    res = step([batch], lr=1e-3, momentum=0.9)
    assert res.finite and res.overflow and res.loss == res.loss  # loss finite, step skipped
    for n, p in step.model.named_parameters():  # no optimizer step, no EMA update
        assert torch.equal(p, weights[n]), n
    for st in step.optimizer.state.values():  # AdamW never stepped (skipped on the device)
        assert float(st["step"]) == 0 and not st["exp_avg"].any() and not st["exp_avg_sq"].any()
    if precision is FP16:
        assert step.loss_scale() == scale / 2
    else:
        assert scale is None
    step.overflow_next = False
    res = step([batch], lr=1e-3, momentum=0.9)
    assert res.finite and not res.overflow
    assert any(not torch.equal(p, weights[n]) for n, p in step.model.named_parameters())


def test_nonfinite_loss_is_not_an_overflow():
    step, batch = _step()
    step.poison_next = True
    res = step([batch], lr=1e-3, momentum=0.9)
    assert not res.finite and not res.overflow


# -- partial resume ----------------------------------------------------------------------------
def _trained(cfg) -> tuple[dict, TrainStep]:
    model = build_model(cfg)
    step = TrainStep(model, cfg, CPU, FP32)
    step([make_batch(cfg)], lr=1e-3, momentum=0.9)
    state = {
        "model": model.state_dict(),
        "optimizer": step.optimizer.state_dict(),
        "optimizer_params": optimizer_param_names(model, step.optimizer),
    }
    return state, step


def test_fpn_off_loads_what_fits_and_keeps_the_optimizer_state():
    on = cfg_of(model={"use_fpn": True, "fpn": {"feature_dim": 48}})
    state, _ = _trained(on)
    off = cfg_of()
    model = build_model(off)
    step = TrainStep(model, off, CPU, FP32)
    report = load_model_state(model, state["model"], {"fpn"})
    assert report.partial
    assert any(k.startswith("encoder.fpn.") for k in report.dropped)
    assert any(k.startswith("target_encoder.fpn.") for k in report.dropped)
    assert "predictor.heads.1.weight" in report.dropped and not report.missing
    for k, v in model.state_dict().items():  # everything that fits was loaded
        torch.testing.assert_close(v, state["model"][k])
    assert load_optimizer_state(step.optimizer, state, model, partial=True) == "restored"
    names = optimizer_param_names(model, step.optimizer)
    idx = names[0].index("encoder.vit.blocks.0.attn.qkv.weight")
    restored = step.optimizer.state[step.optimizer.param_groups[0]["params"][idx]]
    old_idx = state["optimizer_params"][0].index("encoder.vit.blocks.0.attn.qkv.weight")
    torch.testing.assert_close(restored["exp_avg"], state["optimizer"]["state"][old_idx]["exp_avg"])
    step([make_batch(off)], lr=1e-3, momentum=0.9)  # and it trains on


def test_keys_of_a_module_still_on_are_an_error():
    on = cfg_of(model={"use_fpn": True, "fpn": {"feature_dim": 48}})
    state, _ = _trained(on)
    del state["model"]["encoder.vit.blocks.0.attn.qkv.weight"]
    model = build_model(cfg_of())
    with pytest.raises(ck.IncompatibleCheckpointError, match=r"blocks\.0\.attn\.qkv"):
        load_model_state(model, state["model"], {"fpn"})
    plain, _ = _trained(cfg_of())  # FPN is on now and the checkpoint has no FPN weights
    with pytest.raises(ck.IncompatibleCheckpointError, match="fpn"):
        load_model_state(build_model(on), plain["model"], set())


def test_optimizer_without_names_is_reset_and_said():
    on = cfg_of(model={"use_fpn": True, "fpn": {"feature_dim": 48}})
    state, _ = _trained(on)
    del state["optimizer_params"]
    off = cfg_of()
    model = build_model(off)
    step = TrainStep(model, off, CPU, FP32)
    load_model_state(model, state["model"], {"fpn"})
    assert load_optimizer_state(step.optimizer, state, model, partial=True) == "reset"
    assert not step.optimizer.state


# -- verified checkpoints ----------------------------------------------------------------------
class NotAllowed:
    """An object weights_only loading refuses: a checkpoint holding it cannot be resumed."""


def test_a_checkpoint_that_does_not_read_back_is_unverified_and_prunes_nothing(tmp_path):
    w = ck.CheckpointWriter(tmp_path, keep_last_k=2)
    for i in (1, 2):
        assert w.save({"w": torch.ones(2), "step": i}, {"epoch": i, "step": i}).verified
    bad = w.save({"w": torch.ones(2), "x": NotAllowed()}, {"epoch": 3, "step": 3})
    assert not bad.verified and "weights_only" in bad.problem
    assert len(ck.list_checkpoints(tmp_path)) == 3  # nothing pruned
    ok = w.save({"w": torch.ones(2)}, {"epoch": 4, "step": 4})
    assert ok.verified and len(ck.list_checkpoints(tmp_path)) == 2


def test_a_checkpoint_damaged_on_disk_after_writing_is_unverified(tmp_path, monkeypatch):
    w = ck.CheckpointWriter(tmp_path, keep_last_k=2)
    real = ck._sha256
    calls = iter(range(100))
    # the second hash (the re-read) sees other bytes than the first (the sidecar's)
    monkeypatch.setattr(ck, "_sha256", lambda p: real(p) if next(calls) % 2 == 0 else "0" * 64)
    saved = w.save({"w": torch.ones(2)}, {"epoch": 1, "step": 1})
    assert not saved.verified and "sha256" in saved.problem


# -- phases: "loader" until the first batch of an epoch, "data" for mid-epoch waits -----------
@pytest.mark.slow
def test_phase_is_loader_for_the_first_batch_and_data_after(tmp_path):
    from tests.workerutil import DEMO, TINY
    from trainer.config import load_config
    from trainer.runtime.emitter import Emitter
    from trainer.train.loop import Worker

    cfg = load_config(DEMO, [*TINY, "training.epochs=1", "data.synthetic.num_train=64"])
    em = Emitter(tmp_path / "events.jsonl")
    worker = Worker(cfg, tmp_path, None, em)
    worker.setup()
    seen: list[str] = []
    real = worker.loader

    def loader(epoch, start):
        seen.append("make:" + em.phase)
        for batch in real(epoch, start):
            seen.append("wait:" + em.phase)
            yield batch

    worker.loader = loader  # type: ignore[method-assign]
    worker.train_epoch()
    em.close()
    assert seen == ["make:loader", "wait:loader", "wait:data", "wait:data", "wait:data"]
    assert worker.outcomes.step_s() is not None and len(worker.outcomes.step_times) == 4
