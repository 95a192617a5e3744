"""The one way the worker copies host tensors to its device.

    batch = to_device(cpu_tensor, device)      # async only from pinned memory to CUDA
    extra = host_vector([1.0, 0.0], device)    # host numbers on the device, no host sync

``to_device`` is the one host → device copy: asynchronous (``non_blocking``) only from pinned
host memory to CUDA, a plain copy everywhere else. An unpinned source copied non-blocking and
then dropped can be read by the device after the host has reused its pages (MPS: silently
corrupted batches); a blocking copy from pageable memory costs CUDA a host sync.
"""

from __future__ import annotations

import torch


def copy_is_async(src: torch.Tensor, device: torch.device) -> bool:
    """Whether copying ``src`` to ``device`` may be ``non_blocking``: pinned host memory to CUDA
    only (the copy engine reads the pinned pages after the host has moved on, and the caching
    host allocator keeps them until the copy is done). Everything else is a plain copy."""
    return device.type == "cuda" and src.device.type == "cpu" and src.is_pinned()


def to_device(src: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``src`` on ``device`` (``src`` itself when it is there already), copied the way that
    device allows (:func:`copy_is_async`)."""
    return src.to(device, non_blocking=copy_is_async(src, device))


def host_vector(values: list[float], device: torch.device) -> torch.Tensor:
    """A float32 vector of host numbers on ``device`` without a host sync: on CUDA it is built in
    pinned memory and copied asynchronously; elsewhere an ordinary tensor."""
    host = torch.tensor(values, dtype=torch.float32, pin_memory=device.type == "cuda")
    return to_device(host, device)
