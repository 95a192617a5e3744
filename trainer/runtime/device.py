"""Device, precision and memory handling: every device-specific decision of the worker lives here.

    device = select_device(cfg.device)                   # "auto": cuda > mps > cpu
    precision = select_precision(device, cfg.training.use_amp, cfg.training.precision)
    kernels = kernels_for(device, precision)             # foreach / fused / autocast / scaler
    with kernels.autocast():
        loss = model(batch)

Contracts:
- ``select_device`` never falls back silently: an explicit device that is not available is a
  :class:`~trainer.config.ConfigError` naming the torch build (upstream's auto-detection never
  picked MPS, and nothing said so).
- ``kernels_for`` is the single place kernel flags are chosen (foreach, fused, autocast dtype,
  scaler), from torch's own lists of what each device type supports, so a device a flag does
  not support (``foreach=True`` on MPS) never gets it.
- ``select_precision`` is the single place AMP is decided; the chosen name is reported in the
  ``started`` event so the effective precision is never a guess.
- ``memory_readings`` is cheap (no device sync) and never raises: it feeds heartbeats, and a
  missing reading must not kill the worker.
- host → device copies go through :mod:`trainer.runtime.copies` (``to_device``: asynchronous only
from
  pinned host memory to CUDA).
- ``is_oom`` recognises every out-of-memory shape we know (CUDA, HIP, both MPS variants, cuDNN,
  cuBLAS, the CPU allocator, ``MemoryError``) and not a bare "Killed"; the texts are
  ``trainer.events.OOM_TEXTS``, the list the supervisor matches too.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import ConfigError
from trainer.events import OOM_TEXTS

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


PRECISIONS: dict[str, Precision] = {"fp32": FP32, "bf16": BF16, "fp16": FP16}


def select_precision(device: torch.device, use_amp: bool, requested: str = "auto") -> Precision:
    """The autocast precision for ``device``: ``requested`` (``training.precision``) when it is
    fp32/bf16/fp16, else the device's choice; ``use_amp=False`` with ``auto`` gives fp32.

    The device's choice (``auto``):
    - CUDA: bf16 autocast where the GPU supports it (Ampere and newer); otherwise fp16 with a
      GradScaler.
    - MPS: fp16 autocast with a GradScaler, from torch 2.8 (where GradScaler works on MPS);
      fp32 on older torch. Not bf16: the target Macs (M1/M2) have no bf16 arithmetic, Metal
      emulates it in fp32, so it costs conversions and saves nothing; fp16 runs natively.
    - CPU: bf16 autocast where the CPU has bf16 dot-product instructions (x86 AVX512-BF16 or
      AMX: Zen 4 and newer, Cooper Lake / Sapphire Rapids and newer; :func:`cpu_native_bf16`),
      fp32 everywhere else. With the instructions, oneDNN runs the matmuls in bf16 at about
      twice the fp32 rate (the conservative ViT-S/16 step at batch 8 on a 2-core Zen 4:
      9.1 vs 4.1 img/s) and the demo learns the same (kNN/probe within 0.2 points); without
      them bf16 is emulated and slower than fp32. Arm CPUs keep fp32 (not measured there).

    A forced precision runs anywhere torch supports it (fp16 + GradScaler on the CPU is how
    the tests exercise the overflow path); one the device cannot run is a ConfigError.
    """
    if requested != "auto":
        if requested not in PRECISIONS:
            raise ConfigError(f"training.precision: {requested!r} is not auto/fp32/bf16/fp16")
        if requested in ("bf16", "fp16") and not use_amp:
            raise ConfigError(
                f"training.use_amp: false contradicts training.precision: {requested}"
            )
        if requested == "fp16" and device.type == "mps" and _torch_version() < _MPS_FP16_MIN_TORCH:
            raise ConfigError(
                f"training.precision: fp16 on MPS needs torch >= 2.8 for its GradScaler "
                f"(this is torch {torch.__version__}); use auto or fp32"
            )
        if (
            requested == "bf16"
            and device.type == "cuda"
            and not torch.cuda.is_bf16_supported(including_emulation=False)
        ):
            raise ConfigError("training.precision: bf16 is not supported by this GPU; use fp16")
        return PRECISIONS[requested]
    if not use_amp:
        return FP32
    if device.type == "cuda":
        return BF16 if torch.cuda.is_bf16_supported(including_emulation=False) else FP16
    if device.type == "mps":
        return FP16 if _torch_version() >= _MPS_FP16_MIN_TORCH else FP32
    return BF16 if device.type == "cpu" and cpu_native_bf16() else FP32


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products in hardware (x86 AVX512-BF16 or AMX tiles),
    as torch's own CPU capability probes report it; False where torch cannot tell."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    cpu = getattr(torch, "cpu", None)
    for name in probes:
        probe = getattr(cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # a probe that fails means "cannot tell"
            continue
    return False


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for the precision, or a no-op context for fp32."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only when the precision needs one (fp16)."""
    return torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)


# ---------------------------------------------------------------------------------------------
# kernels: every device-specific kernel flag the worker passes to torch is decided here, from
# torch's own lists of what each device type supports — nowhere else says foreach=/fused=.
def _foreach_supported(device_type: str) -> bool:
    """torch's rule for foreach kernels (``_device_has_foreach_support``: its list + cpu)."""
    try:
        from torch.utils import _foreach_utils as fu

        return device_type in [*fu._get_foreach_kernels_supported_devices(), "cpu"]
    except (ImportError, AttributeError):  # private API moved: only what is certain
        return device_type in ("cuda", "cpu")


def _fused_supported(device_type: str) -> bool:
    """torch's list of device types with fused optimizer kernels."""
    try:
        from torch.utils import _foreach_utils as fu

        return device_type in fu._get_fused_kernels_supported_devices()
    except (ImportError, AttributeError):
        return device_type == "cuda"


@dataclass(frozen=True)
class Kernels:
    """The kernel choices for one (device type, precision); built by :func:`kernels_for`.

    ``foreach``: torch has foreach kernels for the device type (not MPS in torch 2.14, where
    ``clip_grad_norm_(..., foreach=True)`` raises); it governs clipping, per-module norms and
    the EMA lerp. ``fused_adamw``: fused AdamW (torch's fused list); else foreach AdamW where
    foreach is supported, else the per-parameter loop. ``precision``: autocast dtype and whether
    a GradScaler is needed. ``skip_on_device``: a non-finite step can be skipped without the
    host looking (fused AdamW's ``found_inf`` and a gated EMA, see ``trainer.train.step``): CUDA and
    CPU, where that kernel path is the one GradScaler itself uses and is tested; MPS keeps the
    host check until it is measured there.
    """

    device_type: str
    precision: Precision
    foreach: bool
    fused_adamw: bool

    def adamw_kwargs(self) -> dict[str, Any]:
        return {"fused": True} if self.fused_adamw else {"foreach": self.foreach}

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.precision.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 (on CPU too), None otherwise."""
        if not self.precision.needs_scaler:
            return None
        return torch.amp.GradScaler(self.device_type)

    def clip_grad_norm_(self, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        """Total grad norm (clipping to ``max_norm``; inf = measure only)."""
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=self.foreach)

    def norm(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The L2 norm of a list of tensors taken together (float32 scalar)."""
        if self.foreach:
            parts = list(torch._foreach_norm(tensors))
        else:
            parts = [torch.linalg.vector_norm(t) for t in tensors]
        return torch.linalg.vector_norm(torch.stack(parts)).float()

    @property
    def skip_on_device(self) -> bool:
        return self.fused_adamw and self.device_type in ("cuda", "cpu")

    def lerp_(
        self,
        targets: list[torch.Tensor],
        sources: list[torch.Tensor],
        weight: float | torch.Tensor,
    ) -> None:
        """targets ← targets + weight·(sources − targets), in place (the EMA update).

        A 0-d tensor ``weight`` stays on the device: it goes to the tensor-weight overloads
        (``_foreach_lerp_.List`` with the one weight per target, ``lerp_.Tensor``), never to the
        Scalar ones, which would read it to the host (``.item()``: a sync every step on CUDA).
        Same kernel, same rounding as the Scalar overload (tested bitwise)."""
        if self.foreach:
            if isinstance(weight, torch.Tensor):
                torch._foreach_lerp_(targets, sources, [weight] * len(targets))
            else:
                torch._foreach_lerp_(targets, sources, weight)
        else:
            for t, s in zip(targets, sources, strict=True):
                t.lerp_(s, weight)


def kernels_for(device: torch.device, precision: Precision = FP32) -> Kernels:
    """Kernel choices for ``device``; allocates nothing there (works for a device not present)."""
    return Kernels(
        device_type=device.type,
        precision=precision,
        foreach=_foreach_supported(device.type),
        fused_adamw=_fused_supported(device.type),
    )


def memory_readings(device: torch.device) -> dict[str, int]:
    """Device memory in bytes, cheap (no sync) and never raising ({} when unreadable).

    CUDA: allocated / reserved / peak (max allocated since the last reset); MPS: allocated
    (live tensors) / driver (everything Metal holds, incl. cached pools: a growing gap is the
    usual sign of an MPS leak); CPU: the process RSS as "allocated". CUDA and MPS add "total",
    the device's own capacity (not a reading: :func:`device_total_memory`), which the
    orchestrator's device ceiling is a fraction of.
    """
    try:
        if device.type == "cuda":
            return {
                "allocated": int(torch.cuda.memory_allocated(device)),
                "reserved": int(torch.cuda.memory_reserved(device)),
                "peak": int(torch.cuda.max_memory_allocated(device)),
                **_total(device),
            }
        if device.type == "mps":
            return {
                "allocated": int(torch.mps.current_allocated_memory()),
                "driver": int(torch.mps.driver_allocated_memory()),
                **_total(device),
            }
        import psutil

        return {"allocated": int(psutil.Process().memory_info().rss)}
    except Exception:
        return {}


def device_total_memory(device: torch.device) -> int | None:
    """The device's own memory in bytes (None on a CPU, or unreadable). No sync.

    CUDA: the card's ``total_memory``. MPS (unified memory): ``recommendedMaxWorkingSetSize``
    (``torch.mps.recommended_max_memory``), Metal's recommended working-set limit for a process,
    roughly two thirds to four fifths of the RAM; with the supervisor's
    ``PYTORCH_MPS_HIGH_WATERMARK_RATIO=1.0`` it is also where MPS raises OOM. The host RAM
    stands in on a torch without that call. The rest of the RAM is the host ceiling's."""
    try:
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            return int(torch.cuda.get_device_properties(index).total_memory)
        if device.type == "mps":
            recommended = getattr(torch.mps, "recommended_max_memory", None)
            if recommended is not None:
                return int(recommended())
            import psutil

            return int(psutil.virtual_memory().total)
    except Exception:
        return None
    return None


_TOTALS: dict[str, int | None] = {}


def _total(device: torch.device) -> dict[str, int]:
    key = str(device)
    if key not in _TOTALS:
        _TOTALS[key] = device_total_memory(device)
    total = _TOTALS[key]
    return {"total": total} if total else {}


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
    return any(marker in text for marker in OOM_TEXTS)


def optimizer_kwargs(device: torch.device) -> dict[str, Any]:
    """AdamW kwargs for ``device`` (see :class:`Kernels`)."""
    return kernels_for(device).adamw_kwargs()
