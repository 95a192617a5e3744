"""The pipelined step: numbers read one step late, bad steps skipped on the device.

The worker launches step N+1 before it reads step N (``TrainStep.launch``); a non-finite or
overflowing step must then have changed nothing by itself — no AdamW update, no moment, no step
count, no EMA — because the host was not there to stop it. And the device-side skip must train
exactly like the host-decided one (the path MPS keeps).
"""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_model_switches import cfg_of, make_batch
from trainer.model.hjepa import build_model
from trainer.runtime.device import FP16, FP32, kernels_for
from trainer.train.step import TrainStep

CPU = torch.device("cpu")


def _step(precision=FP32, seed=0) -> tuple[TrainStep, object]:
    torch.manual_seed(seed)
    cfg = cfg_of(training={"precision": "fp16"} if precision is FP16 else {})
    return TrainStep(build_model(cfg), cfg, CPU, precision), make_batch(cfg)


def _snapshot(step: TrainStep) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in step.model.named_parameters()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[n], b[n]) for n in a)


def test_cpu_and_cuda_skip_on_the_device_mps_asks_the_host():
    assert kernels_for(CPU).skip_on_device
    assert kernels_for(torch.device("cuda")).skip_on_device
    assert not kernels_for(torch.device("mps")).skip_on_device


@pytest.mark.parametrize("fault", ["poison_next", "overflow_next"])
def test_a_bad_step_launched_unread_changes_nothing(fault):
    step, batch = _step()
    step([batch], lr=1e-3, momentum=0.9)  # one real step first: moments and EMA in motion
    before = _snapshot(step)
    state = {k: v.clone() for k, v in step.optimizer.state[step.params[0]].items()}
    setattr(step, fault, True)
    bad = step.launch([batch], lr=1e-3, momentum=0.9)  # nobody reads it yet
    setattr(step, fault, False)
    assert _same(before, _snapshot(step))  # encoder, predictor and EMA target untouched
    after = step.optimizer.state[step.params[0]]
    assert all(torch.equal(state[k], after[k]) for k in state)  # step count and moments too
    good = step.launch([batch], lr=1e-3, momentum=0.9)  # the next one runs before the read
    res = bad.result()
    if fault == "poison_next":
        assert not res.finite and not res.overflow
    else:
        assert res.finite and res.overflow
    assert good.result().finite and not good.result().overflow
    assert float(after["step"]) == float(state["step"]) + 1  # only the good step counted
    assert not _same(before, _snapshot(step))


@pytest.mark.parametrize("precision", [FP32, FP16], ids=["fp32", "fp16-scaler"])
def test_device_skip_trains_exactly_like_the_host_decision(precision):
    """Same seed, same batches, an overflow in the middle: the device-gated path and the
    host-decided path end with identical weights, target, moments and loss scale."""
    results = []
    for on_device in (True, False):
        step, batch = _step(precision)
        step.skip_on_device = on_device
        seen = []
        for i in range(4):
            step.overflow_next = i == 2
            seen.append(step([batch], lr=1e-3, momentum=0.95))
        results.append((step, seen))
    (dev, dev_seen), (host, host_seen) = results
    assert (
        [r.overflow for r in dev_seen]
        == [r.overflow for r in host_seen]
        == [
            False,
            False,
            True,
            False,
        ]
    )
    assert [r.loss for r in dev_seen] == pytest.approx([r.loss for r in host_seen])
    assert _same(_snapshot(dev), _snapshot(host))
    assert dev.loss_scale() == host.loss_scale()


def test_result_is_read_once_and_kept():
    step, batch = _step()
    pending = step.launch([batch], lr=1e-3, momentum=0.9, grad_norms=True)
    first = pending.result()
    assert pending.result() is first
    assert first.grad_norms and set(first.grad_norms) <= {n for n, _ in step.model.named_children()}
    assert len(first.levels) == 3 and first.grad_norm > 0
