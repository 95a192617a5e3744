"""Host → device copies are asynchronous only where that is safe, and on MPS every kernel option
the worker picks is one torch supports there.

``non_blocking=True`` from pageable (unpinned) host memory is a correctness hazard: the copy
may still read the pages after the host has dropped the batch and the next collate reused them
(on MPS: silently corrupted batches). So ``trainer.runtime.copies.to_device`` is the one copy, async
only from pinned memory to CUDA, and the prefetcher, the evaluation and ``Batch.to`` use it.
Without a GPU here, the ``meta`` device stands in for "a device that is not CUDA" (MPS): the
copies are recorded at the dispatcher, where the ``non_blocking`` flag is visible.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils import _foreach_utils as fu
from torch.utils._python_dispatch import TorchDispatchMode

from tests.unit.test_model_switches import cfg_of, make_batch
from trainer.data.prefetch import DevicePrefetch
from trainer.eval.metrics import extract_features
from trainer.runtime.copies import copy_is_async, to_device
from trainer.runtime.device import FP16, kernels_for, select_precision

ROOT = Path(__file__).resolve().parents[2]
MPS = torch.device("mps")
META = torch.device("meta")  # any device that is not CUDA (see the module docstring)
aten = torch.ops.aten


class _Copies(TorchDispatchMode):
    """Records (target device, non_blocking) of every cross-device copy."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._to_copy.default and kwargs.get("device") is not None:
            self.seen.append((str(kwargs["device"]), bool(kwargs.get("non_blocking", False))))
        return func(*args, **kwargs)


def _source(device: str, pinned: bool) -> SimpleNamespace:
    return SimpleNamespace(device=torch.device(device), is_pinned=lambda: pinned)


@pytest.mark.parametrize(
    ("src", "pinned", "dst", "async_"),
    [
        ("cpu", True, "cuda", True),  # the one asynchronous case
        ("cpu", False, "cuda", False),  # pageable: a plain (staged) copy
        ("cpu", True, "mps", False),
        ("cpu", False, "mps", False),
        ("cpu", False, "cpu", False),
        ("cuda", False, "cpu", False),
    ],
)
def test_only_pinned_host_memory_to_cuda_is_copied_asynchronously(src, pinned, dst, async_):
    assert copy_is_async(_source(src, pinned), torch.device(dst)) is async_  # type: ignore[arg-type]


def test_to_device_on_the_same_device_is_the_tensor_itself():
    t = torch.ones(3)
    assert to_device(t, torch.device("cpu")) is t


def test_prefetcher_copies_a_batch_to_a_non_cuda_device_with_a_plain_copy():
    batch = make_batch(cfg_of())
    rec = _Copies()
    with rec:
        moved = next(DevicePrefetch(iter([batch]), META))
    assert moved.images.device == META
    assert len(rec.seen) == len(batch.tensors())
    assert all(not non_blocking for _, non_blocking in rec.seen), rec.seen


def test_evaluation_copies_images_to_a_non_cuda_device_with_a_plain_copy():
    data = [(torch.randn(3, 8, 8), i % 2) for i in range(6)]
    arrived: list[torch.device] = []

    def encode(x: torch.Tensor) -> torch.Tensor:
        arrived.append(x.device)
        return torch.zeros(x.shape[0], 4)

    rec = _Copies()
    with rec:
        feats, labels = extract_features(encode, data, batch_size=4, device=META)
    assert arrived == [META, META] and feats.shape == (6, 4) and labels.tolist() == [0, 1] * 3
    assert [nb for dev, nb in rec.seen if dev == "meta"] == [False, False]


def test_no_non_blocking_copy_outside_the_copy_helper():
    """Every other module copies through ``to_device``; the step's statistics go device → host
    into pinned memory on CUDA only (``PendingStep.start``), the one other async copy."""
    pattern = re.compile(r"non_blocking\s*=\s*True")
    offenders = [
        f"{path.name}:{n}"
        for path in sorted((ROOT / "trainer").glob("*.py"))
        if path.name != "copies.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and "host.copy_(vec, non_blocking=True)" not in line
    ]
    assert offenders == []


# -- MPS: every kernel option the worker picks is one torch supports there ------------------
def test_mps_kernel_options_are_ones_torch_supports_there():
    precision = select_precision(MPS, use_amp=True)  # what the worker picks on a Mac (torch ≥ 2.8)
    assert precision is FP16
    k = kernels_for(MPS, precision)
    # foreach kernels: only where torch lists them (not MPS, where clipping with foreach raises)
    assert k.foreach == ("mps" in fu._get_foreach_kernels_supported_devices())
    assert not k.foreach
    # fused AdamW: only where torch's fused list has the device type
    assert not k.fused_adamw or "mps" in fu._get_fused_kernels_supported_devices()
    assert k.adamw_kwargs() == ({"fused": True} if k.fused_adamw else {"foreach": False})
    # the host decides a skipped step: fused Adam on MPS ignored found_inf/grad_scale until
    # pytorch/pytorch#186360, so no device-side gate is trusted there
    assert not k.skip_on_device
    # autocast: available for MPS and fp16 is one of its dtypes (torch warns and disables
    # autocast for a dtype it does not support there)
    assert torch.amp.is_autocast_available("mps")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctx = k.autocast()
        assert isinstance(ctx, torch.autocast)
        assert ctx.fast_dtype == torch.float16 and ctx._enabled
        # GradScaler on MPS (torch ≥ 2.8): enabled, and its unscale avoids float64 there
        scaler = k.scaler()
        assert scaler is not None and scaler.is_enabled()
    assert scaler._device == "mps"


def test_mps_per_tensor_kernels_compute_what_the_foreach_ones_do():
    """What MPS runs instead of foreach (clipping, norms, the gated EMA lerp) gives the same
    numbers, run here on the CPU."""
    fast, slow = kernels_for(torch.device("cpu")), kernels_for(MPS)
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    b = [t.clone() for t in a]
    for t in (*a, *b):
        t.grad = torch.full_like(t, 3.0)
    torch.testing.assert_close(fast.clip_grad_norm_(a, 1.0), slow.clip_grad_norm_(b, 1.0))
    src = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    weight = torch.tensor(1.0) * 0.004
    fast.lerp_(a, src, weight)
    slow.lerp_(b, src, weight)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
