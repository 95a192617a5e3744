"""Device selection, precision, memory readings and OOM recognition on this CPU machine."""

from __future__ import annotations

import pytest
import torch

import trainer.runtime.device as device_mod
from trainer.config import ConfigError
from trainer.runtime.device import (
    autocast,
    empty_cache,
    grad_scaler,
    is_oom,
    memory_readings,
    optimizer_kwargs,
    select_device,
    select_precision,
    synchronize,
)

CPU = torch.device("cpu")
NO_CUDA = not torch.cuda.is_available()
NO_MPS = not torch.backends.mps.is_available()


@pytest.mark.parametrize(
    ("cuda", "mps", "want"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, cuda: bool, mps: bool, want: str):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: mps)
    assert select_device("auto") == torch.device(want)
    assert select_device(" Auto ") == torch.device(want)
    assert select_device("cpu") == CPU


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is present")
def test_explicit_cuda_without_cuda_is_a_clear_config_error():
    with pytest.raises(ConfigError) as err:
        select_device("cuda")
    msg = str(err.value)
    assert msg.startswith("device: cuda requested but not available")
    assert f"torch {torch.__version__}" in msg
    assert "built with" in msg  # "built with CUDA 13.0" or "built without CUDA"


@pytest.mark.skipif(not NO_MPS, reason="MPS is present")
def test_explicit_mps_without_mps_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="device: mps requested but not available"):
        select_device("mps")


def test_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError, match="is not a device"):
        select_device("tpu9")


def test_cpu_precision_is_bf16_only_with_bf16_instructions(monkeypatch):
    """auto on a CPU: bf16 autocast where the CPU has bf16 dot products, fp32 elsewhere; no
    scaler either way; use_amp: false is fp32 on any CPU."""
    for native, name in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(device_mod, "cpu_native_bf16", lambda n=native: n)
        p = select_precision(CPU, True)
        assert p.name == name and not p.needs_scaler
        assert select_precision(CPU, False).name == "fp32"
        with autocast(CPU, p):
            out = torch.ones(4, 4) @ torch.ones(4, 4)
        assert out.dtype == (torch.bfloat16 if native else torch.float32)
        assert not grad_scaler(CPU, p).is_enabled()


def test_native_bf16_probe_reads_torchs_cpu_capabilities(monkeypatch):
    """The probe is torch's own: AVX512-BF16 or AMX tiles; a missing or failing probe is 'no'."""
    cpu = torch.cpu
    for avx, amx, want in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(cpu, "_is_avx512_bf16_supported", lambda v=avx: v, raising=False)
        monkeypatch.setattr(cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert device_mod.cpu_native_bf16() is want

    def broken() -> bool:
        raise RuntimeError("cpuinfo failed")

    monkeypatch.setattr(cpu, "_is_avx512_bf16_supported", broken, raising=False)
    monkeypatch.delattr(cpu, "_is_amx_tile_supported", raising=False)
    assert device_mod.cpu_native_bf16() is False


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_cuda_precision_is_bf16_or_fp16_with_scaler():
    cuda = torch.device("cuda")
    p = select_precision(cuda, True)
    assert p.name in ("bf16", "fp16") and p.needs_scaler == (p.name == "fp16")
    with autocast(cuda, p):
        out = torch.ones(8, 8, device=cuda) @ torch.ones(8, 8, device=cuda)
    assert out.dtype == p.dtype
    assert select_precision(cuda, False).name == "fp32"


def test_cpu_memory_reading_is_process_rss():
    readings = memory_readings(CPU)
    assert set(readings) == {"allocated"}
    assert readings["allocated"] > 10 * 2**20  # a python process with torch loaded


def test_memory_readings_never_raise(monkeypatch):
    """A reading that fails (no CUDA behind a cuda device, psutil refused) is {}, not an error
    in the middle of training."""

    def refused(*args: object) -> object:
        raise RuntimeError("cannot read")

    monkeypatch.setattr(torch.cuda, "memory_allocated", refused)
    assert memory_readings(torch.device("cuda")) == {}
    import psutil

    monkeypatch.setattr(psutil, "Process", refused)
    assert memory_readings(CPU) == {}


def test_housekeeping_calls_go_to_the_devices_own_backend(monkeypatch):
    """Each device's cache and queue calls reach its own backend and no other (a CPU run
    never touches CUDA or MPS, which would fail or initialise a context there)."""
    calls: list[str] = []
    for mod, name in ((torch.cuda, "cuda"), (torch.mps, "mps")):
        monkeypatch.setattr(mod, "empty_cache", lambda n=name: calls.append(f"{n} empty"))
        monkeypatch.setattr(mod, "synchronize", lambda *_, n=name: calls.append(f"{n} sync"))
    for dev in (CPU, torch.device("cuda"), torch.device("mps")):
        empty_cache(dev)
        synchronize(dev)
    assert calls == ["cuda empty", "cuda sync", "mps empty", "mps sync"]


def test_optimizer_kwargs_give_a_working_adamw(monkeypatch):
    """Fused AdamW where torch lists fused kernels for the device, else foreach; what this
    torch chooses for the CPU builds an AdamW that steps."""
    for fused, want in ((True, {"fused": True}), (False, {"foreach": True})):
        monkeypatch.setattr(device_mod, "_fused_supported", lambda _t, f=fused: f)
        monkeypatch.setattr(device_mod, "_foreach_supported", lambda _t: True)
        assert optimizer_kwargs(CPU) == want
    monkeypatch.undo()
    kwargs = optimizer_kwargs(CPU)
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, **kwargs)
    p.grad = torch.ones(3)
    opt.step()
    assert bool((p < 1.0).all())


OOM_MESSAGES = [
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB "
    "of which 1.2 GiB is free.",
    "CUDA error: out of memory",
    "HIP out of memory. Tried to allocate 1.00 GiB",
    "MPS backend out of memory (MPS allocated: 17.2 GB, other allocations: 1.1 GB, max allowed: "
    "18.13 GB). Tried to allocate 256.00 MB on private pool. Use "
    "PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper limit for memory allocations "
    "(may cause system failure).",
    "MPS backend out of memory (MPS allocated: 30.1 GB, other allocations: 2.0 GB). Tried to "
    "allocate 1.00 GB on shared pool.",
    "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a "
    "non-contiguous input.",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
    "tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)",
]


@pytest.mark.parametrize("message", OOM_MESSAGES)
def test_is_oom_on_every_known_message_shape(message: str):
    assert is_oom(RuntimeError(message))


def test_is_oom_on_types():
    assert is_oom(torch.OutOfMemoryError("whatever"))
    assert is_oom(MemoryError())


def test_real_cpu_allocation_failure_is_oom():
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except Exception as exc:  # the real message of this torch build
        assert is_oom(exc), str(exc)
    else:
        pytest.fail("allocating 4 EiB succeeded")


@pytest.mark.parametrize(
    "message",
    [
        "DataLoader worker (pid 4242) is killed by signal: Killed.",
        "Killed",
        "CUDA error: device-side assert triggered",
        "expected scalar type Float but found Half",
    ],
)
def test_is_not_oom(message: str):
    assert not is_oom(RuntimeError(message))
