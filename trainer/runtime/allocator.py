"""Keep freed host memory in the process on CPU runs (glibc ``mallopt``).

    from trainer.runtime.allocator import keep_freed_memory
    keep_freed_memory(device)     # once, before the first training step; no-op off CPU/glibc

A CPU training step allocates and frees the same large activation buffers every step. With
glibc's defaults, blocks above the (dynamic) mmap threshold are unmapped on free and the top of
the heap is trimmed back to the OS, so every step maps fresh pages again: on the ViT-S/16
batch-8 step that was ~130,000 page faults per step and ~25% of the process CPU time (measured
with ``resource.getrusage``, ``ru_minflt``). Fixing the mmap threshold at glibc's maximum
(32 MiB), trimming only above 2 GiB free and padding heap growth by 512 MiB keeps the buffers
mapped: page faults drop to a few hundred per step. The process's RSS then stays at its peak,
which a training process reaches in its first step anyway. CUDA/MPS runs keep their
activations on the device and are left alone; so are non-glibc platforms (macOS), where
``mallopt`` is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
_TOP_PAD = 512 << 20
_NEVER_TRIM = 2**31 - 1  # mallopt takes a C int: trim only above 2 GiB free


@functools.cache
def _apply() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
    ok &= mallopt(_M_TOP_PAD, _TOP_PAD) == 1
    return bool(ok)


def keep_freed_memory(device: torch.device) -> bool:
    """Apply the settings above when ``device`` is the CPU; True if they are in effect."""
    if device.type != "cpu":
        return False
    return _apply()


def release_freed_memory() -> None:
    """Hand memory freed by dropped objects back, so the next measurement in this process
    starts from a clean slate (the per-feature probe, ``trainer/train/modes.py``): collect garbage,
    empty the CUDA/MPS caches and reset CUDA's peak counter, and on glibc trim the heap
    (``malloc_trim(0)`` returns free pages even with the settings above in force)."""
    import gc

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        torch.mps.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim(0)
        except (OSError, AttributeError):
            pass
