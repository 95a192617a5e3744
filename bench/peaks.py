"""Peak dense FLOP/s per device, for MFU (model FLOPs utilisation) in bench/throughput.py.

    tflops, source = peak_tflops(device, precision_name)        # e.g. (989.4, "table: H100 ...")

GPU: the vendor's dense (no sparsity) tensor-core figure for the precision the step runs in
(bf16/fp16; fp32 runs use the TF32 figure, PyTorch's default matmul precision aside). The first
table row whose key occurs in ``torch.cuda.get_device_name()`` wins, so more specific keys come
first. CPU: an estimate, ``threads × clock × FLOP/cycle`` (fp32: 64 with AVX-512, 32 with
AVX2+FMA, 8 otherwise; bf16: twice that with AVX512-BF16, 1024 with AMX; the clock from
/proc/cpuinfo), labelled as such. Unknown devices give
``(None, reason)``; ``--peak-tflops`` on the command line overrides everything.
"""

from __future__ import annotations

from pathlib import Path

import torch

# key in the device name → (bf16/fp16 dense TFLOP/s, tf32 dense TFLOP/s)
GPU_PEAKS: list[tuple[str, tuple[float, float]]] = [
    ("H100 PCIe", (756.0, 378.0)),
    ("H100 NVL", (835.0, 418.0)),
    ("H100", (989.4, 494.7)),  # SXM
    ("H200", (989.4, 494.7)),
    ("H20", (148.0, 74.0)),
    ("B200", (2250.0, 1100.0)),
    ("GH200", (989.4, 494.7)),
    ("A100", (312.0, 156.0)),
    ("A800", (312.0, 156.0)),
    ("L40S", (362.0, 183.0)),
    ("L40", (181.0, 90.5)),
    ("L4", (121.0, 60.0)),
    ("A10G", (70.0, 35.0)),
    ("A10", (125.0, 62.5)),
    ("RTX 4090", (165.2, 82.6)),
    ("RTX 3090", (71.0, 35.6)),
    ("V100", (125.0, 15.7)),  # fp16 only; no bf16
    ("T4", (65.0, 8.1)),
]


def _cpu_flags_and_mhz() -> tuple[set[str], float | None]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set(), None
    flags: set[str] = set()
    mhz = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "cpu MHz" and mhz is None:
            mhz = float(value)
    return flags, mhz


def cpu_peak_tflops(precision: str = "fp32") -> tuple[float | None, str]:
    flags, mhz = _cpu_flags_and_mhz()
    if mhz is None:
        return None, "unknown CPU clock (no /proc/cpuinfo); pass --peak-tflops"
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    kind = "fp32"
    if precision == "bf16" and "amx_bf16" in flags:
        per_cycle, kind = 1024, "bf16 (AMX)"
    elif precision == "bf16" and "avx512_bf16" in flags:
        per_cycle, kind = 2 * per_cycle, "bf16 (AVX512-BF16 dot products)"
    threads = torch.get_num_threads()
    tflops = threads * mhz * 1e6 * per_cycle / 1e12
    return tflops, (f"estimate: {threads} threads x {mhz:.0f} MHz x {per_cycle} {kind} FLOP/cycle")


def peak_tflops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, where the figure comes from)."""
    if device.type == "cpu":
        return cpu_peak_tflops(precision)
    if device.type != "cuda":
        return None, f"no peak table for {device.type}; pass --peak-tflops"
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32) in GPU_PEAKS:
        if key in name:
            value = tf32 if precision == "fp32" else half
            kind = "tf32" if precision == "fp32" else "bf16/fp16"
            return value, f"table: {key} {kind} dense"
    return None, f"{name!r} is not in bench/peaks.py; pass --peak-tflops"
