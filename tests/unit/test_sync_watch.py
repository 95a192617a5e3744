"""bench/sync_watch.py: the CPU proxy records host reads with their line and tells the step's
documented read apart; the CUDA path (torch's sync debug mode, replaced here by a recording
double since this machine has no CUDA) records torch's warning with its caller, lets other
warnings through and always switches the mode back off."""

from __future__ import annotations

import warnings

import pytest
import torch

from bench.sync_watch import HostSyncError, SyncWatch, strict_sync
from trainer.train.step import PendingStep

CPU = torch.device("cpu")


def _read(t: torch.Tensor) -> float:
    return float(t.sum())


def test_the_proxy_records_a_host_read_with_its_line_and_lets_device_work_through():
    t = torch.randn(8)
    with SyncWatch(CPU) as watch:
        gate = (~torch.isfinite(t.sum())).float()
        torch._foreach_lerp_([t.clone()], [t], [1.0 - gate])  # tensor weight: no read
        _read(t)
        torch._foreach_lerp_([t.clone()], [t], t.sum())  # a 0-d weight bound as a Scalar
    ops = [v.op for v in watch.violations]
    assert ops[0] == "Tensor.__float__" and "aten._local_scalar_dense.default" in ops
    assert watch.violations[0].where.startswith("tests/unit/test_sync_watch.py:")
    assert watch.violations[0].where.endswith("in _read")
    assert not any(v.documented for v in watch.violations)


def test_the_documented_one_step_late_read_is_counted_apart():
    pending = PendingStep.now(torch.tensor([1.0, 2.0]), (0, [], [], 0))
    with SyncWatch(CPU) as watch:
        assert pending.result().loss == 1.0
    assert watch.violations and all(v.documented for v in watch.violations)
    assert watch.undocumented == []
    assert all(v.where.startswith("trainer/train/step.py:") for v in watch.violations)


def test_the_strict_proxy_raises_at_the_first_read():
    with pytest.raises(HostSyncError, match=r"Tensor\.item"), strict_sync(CPU):
        torch.ones(2).sum().item()


@pytest.fixture
def cuda_mode(monkeypatch):
    modes: list[object] = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    return modes


def _torch_warns() -> None:
    warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)


def test_on_cuda_each_sync_warning_is_recorded_and_the_mode_restored(cuda_mode):
    before = warnings.showwarning
    with SyncWatch(torch.device("cuda")) as watch:
        for _ in range(3):
            _torch_warns()  # "always": every one, not once per line
    assert cuda_mode == ["warn", 0]
    assert warnings.showwarning is before
    assert len(watch.violations) == 3
    assert watch.violations[0].op == "called a synchronizing CUDA operation"
    assert watch.violations[0].where.endswith("in _torch_warns")


def test_on_cuda_other_warnings_pass_through_and_strict_is_the_error_mode(cuda_mode):
    with pytest.warns(DeprecationWarning, match="unrelated"), SyncWatch(torch.device("cuda")) as w:
        warnings.warn("unrelated", DeprecationWarning, stacklevel=1)
    assert w.violations == []
    with strict_sync(torch.device("cuda")):
        pass
    assert cuda_mode == ["warn", 0, "error", 0]
