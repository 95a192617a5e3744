"""Device, precision and memory handling: every device-specific decision of the worker lives here.

    device = select_device(cfg.device)                   # "auto": cuda > mps > cpu
    precision = select_precision(device, cfg.training.use_amp)
    with autocast(device, precision):
        loss = model(batch)

Contracts:
- ``select_device`` never falls back silently: an explicit device that is not available is a
  :class:`~trainer.config.ConfigError` naming the torch build (upstream's auto-detection never
  picked MPS, and nothing said so).
- ``select_precision`` is the single place AMP is decided; the chosen name is reported in the
  ``started`` event so the effective precision is never a guess.
- ``memory_readings`` is cheap (no device sync) and never raises: it feeds heartbeats, and a
  missing reading must not kill the worker.
- ``is_oom`` recognises every out-of-memory shape we know (CUDA, HIP, both MPS variants, cuDNN,
  cuBLAS, the CPU allocator, ``MemoryError``) and not a bare "Killed".
"""

from __future__ import annotations

import contextlib
import functools
import gc
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import ConfigError

# Text that marks an exception as memory exhaustion (matched on the lower-cased message).
# "out of memory" covers "CUDA out of memory", "CUDA error: out of memory", "HIP out of memory"
# and both MPS variants ("MPS backend out of memory (MPS allocated: ...").
_OOM_TEXT: tuple[str, ...] = (
    "out of memory",
    "cudnn_status_not_supported",
    "cublas_status_alloc_failed",
    "defaultcpuallocator: can't allocate memory",
)

# fp16 autocast works on MPS since torch 2.5, but GradScaler (needed so fp16 gradients do not
# underflow) only works there from torch 2.8 (pytorch/pytorch#142397).
_MPS_FP16_MIN_TORCH = (2, 8)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(pref: str) -> torch.device:
    """Resolve ``cfg.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) to a device.

    ``auto`` picks CUDA, then MPS, then CPU. An explicit device that is not available raises
    ``ConfigError("device: cuda requested but not available (torch 2.x, built with CUDA 12.4)")``.
    """
    pref = pref.strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(pref)
    except RuntimeError as exc:
        raise ConfigError(f"device: {pref!r} is not a device (use auto, cpu, cuda or mps)") from exc
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        built = (
            f"built with CUDA {torch.version.cuda}"
            if torch.backends.cuda.is_built() and torch.version.cuda
            else "built without CUDA"
        )
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device: cuda requested but not available (torch {torch.__version__}, {built})"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {pref} requested but only {torch.cuda.device_count()} CUDA "
                f"device(s) are visible (torch {torch.__version__}, {built})"
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            built = "built with MPS" if torch.backends.mps.is_built() else "built without MPS"
            raise ConfigError(
                f"device: mps requested but not available (torch {torch.__version__}, {built})"
            )
        return device
    raise ConfigError(f"device: {pref!r} is not supported (use auto, cpu, cuda or mps)")


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: ``name`` is reported in events ("bf16" | "fp16" | "fp32")."""

    name: str
    dtype: torch.dtype | None  # autocast dtype; None = no autocast
    needs_scaler: bool  # fp16 needs a GradScaler so small gradients do not underflow


FP32 = Precision("fp32", None, False)
BF16 = Precision("bf16", torch.bfloat16, False)
FP16 = Precision("fp16", torch.float16, True)


def select_precision(device: torch.device, use_amp: bool) -> Precision:
    """Pick the autocast precision for ``device`` (``use_amp=False`` always gives fp32).

    - CUDA: bf16 autocast where the GPU supports it (Ampere and newer); otherwise fp16 with a
      GradScaler.
    - MPS: fp16 autocast with a GradScaler, from torch 2.8 (where GradScaler works on MPS);
      fp32 on older torch. Not bf16: the target Macs (M1/M2) have no bf16 arithmetic, Metal
      emulates it in fp32, so it costs conversions and saves nothing; fp16 runs natively.
    - CPU: fp32. bf16 autocast on CPU is slower than fp32 on most CPUs and saves nothing
      worth having for this workload.
    """
    if not use_amp:
        return FP32
    if device.type == "cuda":
        return BF16 if torch.cuda.is_bf16_supported(including_emulation=False) else FP16
    if device.type == "mps":
        return FP16 if _torch_version() >= _MPS_FP16_MIN_TORCH else FP32
    return FP32


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for the precision, or a no-op context for fp32."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only when the precision needs one (fp16)."""
    return torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)


def memory_readings(device: torch.device) -> dict[str, int]:
    """Device memory in bytes, cheap (no sync) and never raising ({} when unreadable).

    CUDA: allocated / reserved / peak (max allocated since the last reset); MPS: allocated
    (live tensors) / driver (everything Metal holds, incl. cached pools: a growing gap is the
    usual sign of an MPS leak); CPU: the process RSS as "allocated".
    """
    try:
        if device.type == "cuda":
            return {
                "allocated": int(torch.cuda.memory_allocated(device)),
                "reserved": int(torch.cuda.memory_reserved(device)),
                "peak": int(torch.cuda.max_memory_allocated(device)),
            }
        if device.type == "mps":
            return {
                "allocated": int(torch.mps.current_allocated_memory()),
                "driver": int(torch.mps.driver_allocated_memory()),
            }
        import psutil

        return {"allocated": int(psutil.Process().memory_info().rss)}
    except Exception:
        return {}


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak window (CUDA only; other devices keep no peak counter)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def empty_cache(device: torch.device) -> None:
    """Drop unreferenced Python objects, then return the allocator's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (only around timed regions; never in the step loop)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` is memory exhaustion on any device (see module docstring)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, (oom_type, MemoryError)):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _OOM_TEXT)


@functools.cache
def _fused_adamw_works(device_type: str) -> bool:
    try:
        param = torch.nn.Parameter(torch.zeros(2, device=device_type))
        opt = torch.optim.AdamW([param], lr=1e-3, fused=True)
        param.grad = torch.ones_like(param)
        opt.step()
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def optimizer_kwargs(device: torch.device) -> dict[str, Any]:
    """AdamW kwargs: ``{"fused": True}`` where fused AdamW runs on the device (CUDA, MPS, CPU
    on current torch; probed once per device type), else ``{"foreach": True}``."""
    if _fused_adamw_works(device.type):
        return {"fused": True}
    return {"foreach": True}
