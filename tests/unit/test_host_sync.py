"""The steady-state step never waits for the device: no device → host read inside ``launch()``.

The worker launches step N+1 and only then reads step N (``PendingStep.result``, the one
documented read, one step late). Any other read of device data by the host inside the step —
``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``, ``.cpu()``, ``torch.equal``, a
data-dependent shape (``nonzero``, boolean indexing, ``unique``) — would make the host wait
for the device on every step and the read-one-step-late design would save nothing. There is no
CUDA here, so a CPU proxy stands in for ``torch.cuda.set_sync_debug_mode("error")``: the step
runs under a dispatch mode that fails on every aten op that reads tensor data on the host or
sizes its output from the data, and a function mode that fails on the Python-level reads
(``tolist``, ``numpy``, ``cpu``, ``item``, ``__bool__``/``__float__``/``__int__``), which on a
CPU tensor never reach the dispatcher.

Cases: one process (fp32, and fp16 with a GradScaler whose overflow path is gated on the
device), per-module gradient norms (the logging steps), and the multi-rank path — a real gloo
group, the DDP wrapper as the worker builds it, two micro-batches (``no_sync`` on the first),
the caller's ``extra`` numbers and the all-reduce of the statistics vector. The group has one
member (this process) while ``Dist`` says two ranks, so every line the two-rank step runs, runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as td
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from bench.sync_watch import PY_READS, is_host_read
from tests.unit.test_model_switches import cfg_of, make_batch
from trainer.model.hjepa import build_model
from trainer.runtime.device import FP16, FP32, Precision, kernels_for
from trainer.runtime.dist import Dist, wrap_ddp
from trainer.train.step import PendingStep, TrainStep

CPU = torch.device("cpu")
aten = torch.ops.aten

pytestmark = pytest.mark.usefixtures("one_thread")


class HostReadError(AssertionError):
    pass


class _DispatchReads(TorchDispatchMode):
    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bad = is_host_read(func, args, kwargs)  # the ops bench/sync_watch.py watches for
        if bad:
            self.seen.append(str(func))
            raise HostReadError(f"host read inside the step: {func}")
        return func(*args, **kwargs)


class _PythonReads(TorchFunctionMode):
    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in PY_READS:
            name = getattr(func, "__name__", str(func))
            self.seen.append(f"Tensor.{name}")
            raise HostReadError(f"host read inside the step: Tensor.{name}")
        return func(*args, **(kwargs or {}))


@contextmanager
def no_host_reads() -> Iterator[list[str]]:
    """Fail (HostReadError) on any device → host read in the block; yields the list of reads
    seen (also those an ``except`` inside the block swallowed)."""
    seen: list[str] = []
    with _PythonReads(seen), _DispatchReads(seen):
        yield seen
    if seen:
        raise HostReadError(f"host reads inside the step: {seen}")


def steady_state(step: TrainStep, micro: list[Any], **kw: Any) -> None:
    """The worker's pattern: launch step N+1 under the check, then read step N outside it."""
    pending: PendingStep = step.launch(micro, lr=1e-3, momentum=0.99, **kw)
    pending.result()  # warm-up: optimizer state, scaler, the first (lazy) allocations
    pending = step.launch(micro, lr=1e-3, momentum=0.99, **kw)
    for _ in range(3):
        with no_host_reads():
            following = step.launch(micro, lr=1e-3, momentum=0.99, **kw)
        res = pending.result()  # the documented one-step-late read
        assert res.finite
        pending = following
    pending.result()


def _step(precision: Precision, **kw: Any) -> tuple[TrainStep, Any]:
    torch.manual_seed(0)
    cfg = cfg_of(training={"precision": precision.name})
    return TrainStep(build_model(cfg), cfg, CPU, precision, **kw), make_batch(cfg)


@pytest.mark.parametrize("precision", [FP32, FP16], ids=["fp32", "fp16-scaler"])
@pytest.mark.parametrize("grad_norms", [False, True], ids=["plain", "module-norms"])
def test_one_process_step_never_reads_the_device(precision, grad_norms):
    step, batch = _step(precision)
    assert step.skip_on_device  # CPU takes the device-gated path, as CUDA does
    steady_state(step, [batch], grad_norms=grad_norms)


def test_a_skipped_step_is_gated_on_the_device_too():
    """An overflowing step (finite loss, inf gradients) skips AdamW and the EMA without a read."""
    step, batch = _step(FP32)
    step([batch], lr=1e-3, momentum=0.99)
    target = [p.detach().clone() for p in step.model.target_encoder.parameters()]
    step.overflow_next = True
    with no_host_reads():
        pending = step.launch([batch], lr=1e-3, momentum=0.99)
    step.overflow_next = False
    assert pending.result().overflow
    after = list(step.model.target_encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(target, after, strict=True))


@pytest.fixture
def gloo_group(tmp_path: Path) -> Iterator[None]:
    store = td.FileStore(str(tmp_path / "store"), 1)
    td.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        td.destroy_process_group()


@pytest.mark.usefixtures("gloo_group")
def test_multi_rank_step_with_extras_never_reads_the_device():
    dist = Dist(rank=0, world=2, active=True)  # every line of the two-rank step (see docstring)
    torch.manual_seed(0)
    cfg = cfg_of()
    model = build_model(cfg)
    step = TrainStep(model, cfg, CPU, FP32, dist=dist, ddp=wrap_ddp(model, dist))
    batches = [make_batch(cfg, seed=0), make_batch(cfg, seed=1)]
    steady_state(step, batches, extra=[1.0, 0.0, 3.0])
    res = step(batches, lr=1e-3, momentum=0.99, extra=[1.0, 0.0, 3.0])
    assert res.extra == [1.0, 0.0, 3.0]  # a group of one: the sum is the rank's own numbers


# -- the check itself catches what it claims to ---------------------------------------------
@pytest.mark.parametrize(
    "read",
    [
        lambda t: t.sum().item(),
        lambda t: float(t.sum()),
        lambda t: bool(t.sum() > 0),
        lambda t: t.tolist(),
        lambda t: t.cpu(),
        lambda t: torch.equal(t, t),
        lambda t: t[t > 0],
        lambda t: t.nonzero(),
        lambda t: torch._foreach_lerp_([t.clone()], [t], t.sum()),  # 0-d weight as a Scalar
    ],
    ids=[
        "item",
        "float",
        "bool",
        "tolist",
        "cpu",
        "equal",
        "bool-index",
        "nonzero",
        "foreach-scalar",
    ],
)
def test_the_check_fails_on_every_kind_of_host_read(read):
    t = torch.randn(8)
    with pytest.raises(HostReadError), no_host_reads():
        read(t)


def test_the_check_lets_device_side_work_through():
    t = torch.randn(8)
    with no_host_reads():
        gate = (~torch.isfinite(t.sum())).float()
        torch._foreach_lerp_([t.clone()], [t], [1.0 - gate])
        torch.where(t > 0, t, 0.0).repeat_interleave(2)


@pytest.mark.parametrize("device", ["cpu", "mps"], ids=["foreach", "per-tensor"])
def test_a_tensor_ema_weight_gives_bitwise_the_scalar_result(device):
    """The EMA's tensor weight (gated by ``applied``) takes the tensor-weight overload: the same
    kernel and rounding as the Scalar overload it replaced, for applied = 1 and 0."""
    k = kernels_for(torch.device(device))  # MPS's choice (no foreach) runs here on the CPU
    g = torch.Generator().manual_seed(0)
    src = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    for applied in (1.0, 0.0):
        weight = torch.tensor(applied) * (1.0 - 0.996)
        by_scalar = [torch.randn(t.shape, generator=g) for t in src]
        by_tensor = [t.clone() for t in by_scalar]
        before = [t.clone() for t in by_scalar]
        torch._foreach_lerp_(by_scalar, src, float(weight))
        with no_host_reads():
            k.lerp_(by_tensor, src, weight)
        assert all(torch.equal(a, b) for a, b in zip(by_scalar, by_tensor, strict=True))
        if applied == 0.0:
            assert all(torch.equal(a, b) for a, b in zip(before, by_tensor, strict=True))


# -- on CUDA, the real thing: torch's sync debug mode ------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_on_cuda_the_steady_state_step_never_synchronizes(precision):
    """``torch.cuda.set_sync_debug_mode("error")`` around ``launch()``: any synchronizing CUDA
    call (a device → host read, a blocking copy from pageable memory) raises."""
    from trainer.runtime.device import PRECISIONS

    cuda = torch.device("cuda")
    torch.manual_seed(0)
    cfg = cfg_of(training={"precision": precision})
    step = TrainStep(build_model(cfg).to(cuda), cfg, cuda, PRECISIONS[precision])
    batch = make_batch(cfg).pin_memory().to(cuda)
    kw = {"extra": [1.0, 0.0]}
    pending = step.launch([batch], lr=1e-3, momentum=0.99, **kw)
    pending.result()
    pending = step.launch([batch], lr=1e-3, momentum=0.99, **kw)
    for _ in range(3):
        torch.cuda.set_sync_debug_mode("error")
        try:
            following = step.launch([batch], lr=1e-3, momentum=0.99, grad_norms=True, **kw)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert pending.result().extra == [1.0, 0.0]
        pending = following
    pending.result()
