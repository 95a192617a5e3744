"""Record every point where the host waits for the device inside a block of code.

    with SyncWatch(device) as watch:       # on CUDA: torch.cuda.set_sync_debug_mode("warn")
        ...                                # the steady-state steps
    watch.violations                       # [Violation(op, where, documented)]

    with strict_sync(device):              # CUDA: set_sync_debug_mode("error"); elsewhere the
        ...                                # CPU proxy below, raising HostSyncError

On CUDA the real thing: torch's sync debug mode flags each synchronizing CUDA call (a device →
host read such as ``.item()``, a blocking copy from pageable memory, a stream or device
synchronize). In ``"error"`` mode the first one raises and the rest stay unseen, so the watch
uses ``"warn"`` and records each warning with the Python stack that caused it; ``strict_sync``
is the literal ``"error"`` mode. CUDA names no op, so ``op`` is the message and ``where`` the
innermost frame of this repository (backward's syncs surface at the ``.backward()`` call).

Elsewhere (no sync debug mode) a CPU proxy: a dispatch mode that records every aten op whose
result the host must read from the tensor (``_local_scalar_dense``, ``item``, ``is_nonzero``,
``equal``, data-dependent shapes such as ``nonzero`` or boolean indexing), and a function mode
for the Python-level reads that never reach the dispatcher on a CPU tensor (``tolist``,
``cpu``, ``item``, ``__bool__``/``__float__``/``__int__``).

A read inside ``trainer.train.step.PendingStep.result`` — the one documented read of the step, one
step late — is recorded with ``documented=True`` and does not count as a violation of the
steady state.
"""

from __future__ import annotations

import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
_CUDA_MESSAGE = "synchronizing CUDA operation"
aten = torch.ops.aten

# aten ops whose result the host reads from the tensor's memory (a sync on CUDA/MPS)
HOST_READS = {
    aten._local_scalar_dense,  # .item(), float(t), a 0-d tensor bound to a Scalar argument
    aten.item,
    aten.is_nonzero,
    aten.equal,
    aten.allclose,
    aten.nonzero,  # data-dependent output shapes: the host waits to learn the size
    aten.nonzero_static,
    aten.masked_select,
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
    aten.bincount,
}
PY_READS = {
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
    torch.Tensor.item,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
}


class HostSyncError(RuntimeError):
    """The CPU proxy's ``"error"`` mode: a host read where none may be."""


@dataclass(frozen=True)
class Violation:
    op: str  # the aten op or Tensor method (CPU proxy); torch's message (CUDA)
    where: str  # innermost frame of this repository: "trainer/model/hjepa.py:212 in update_target"
    documented: bool  # inside PendingStep.result, the step's one documented read


def _locate(stack: list[traceback.FrameSummary]) -> tuple[str, bool]:
    here = Path(__file__).resolve()
    ours = [
        f
        for f in stack
        if not f.filename.startswith("<")  # <string>, <frozen ...>: no file
        and Path(f.filename).resolve().is_relative_to(ROOT)
        and Path(f.filename).resolve() != here
    ]
    documented = any(
        f.name == "result" and f.filename.endswith(("trainer/train/step.py", "trainer\\step.py"))
        for f in ours
    )
    if not ours:
        return "(outside the repository)", documented
    f = ours[-1]
    return f"{Path(f.filename).resolve().relative_to(ROOT)}:{f.lineno} in {f.name}", documented


def is_host_read(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    packet = func.overloadpacket
    if packet in HOST_READS:
        return True
    if func is aten.repeat_interleave.Tensor:
        return kwargs.get("output_size") is None  # the sizes come from the data
    if packet in (aten.index, aten.index_put, aten.index_put_):
        idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in idx)
    return False


class _DispatchReads(TorchDispatchMode):
    def __init__(self, record: Any) -> None:
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if is_host_read(func, args, kwargs):
            self.record(str(func))
        return func(*args, **kwargs)


class _PythonReads(TorchFunctionMode):
    def __init__(self, record: Any) -> None:
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in PY_READS:
            self.record(f"Tensor.{getattr(func, '__name__', func)}")
        return func(*args, **(kwargs or {}))


class SyncWatch:
    """Records (never raises) every host sync in the block; ``strict=True`` raises at the
    first one not inside the documented read (CUDA: ``set_sync_debug_mode("error")``)."""

    def __init__(self, device: torch.device, strict: bool = False) -> None:
        self.device, self.strict = device, strict
        self.violations: list[Violation] = []
        self._exits: list[Any] = []

    @property
    def kind(self) -> str:
        return "cuda sync debug mode" if self.device.type == "cuda" else "dispatch-mode proxy"

    def _record(self, op: str) -> None:
        where, documented = _locate(traceback.extract_stack()[:-2])
        self.violations.append(Violation(op, where, documented))
        if self.strict and not documented and self.device.type != "cuda":
            raise HostSyncError(f"host read inside the steady-state step: {op} at {where}")

    def __enter__(self) -> SyncWatch:
        if self.device.type == "cuda":
            catcher = warnings.catch_warnings()
            catcher.__enter__()
            self._exits.append(catcher)
            warnings.simplefilter("always")
            shown = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
                if _CUDA_MESSAGE in str(message):
                    self._record(str(message))
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("error" if self.strict else "warn")
        else:
            for mode in (_PythonReads(self._record), _DispatchReads(self._record)):
                mode.__enter__()
                self._exits.append(mode)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        while self._exits:
            self._exits.pop().__exit__(None, None, None)

    @property
    def undocumented(self) -> list[Violation]:
        return [v for v in self.violations if not v.documented]


def strict_sync(device: torch.device) -> SyncWatch:
    """The literal gate: CUDA's ``"error"`` mode, or the CPU proxy raising HostSyncError."""
    return SyncWatch(device, strict=True)
