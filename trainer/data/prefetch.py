"""Batches arrive on the device before the step that needs them.

    batches = DevicePrefetch(iter(loader), device)
    micro = [next(batches) for _ in range(accum)]     # already on ``device``

On CUDA the host → device copy of the NEXT batch is issued on a side stream as soon as the
current one is handed out, so it overlaps the step in flight (the loader pins its batches, so
the copy is truly asynchronous). The compute stream waits on that copy's event only when it
uses the batch, and each tensor is marked as used by the compute stream (``record_stream``) so
the caching allocator never reuses its memory while a kernel may still read it. This is the
classic prefetcher of the large-scale image training loops (one batch ahead is enough: the
loader's workers keep their own queue of ready batches on the host). The side stream is one
per process and device (:func:`side_stream`), shared by the prefetcher of every epoch: a new
stream per epoch would leave the old one's cached blocks reserved in the allocator, which
keeps a separate pool per stream.

Elsewhere (CPU, MPS) there is nothing to overlap: each batch is moved when asked for, with a
plain copy (``Batch.to``: non-blocking only from pinned memory to CUDA), and no batch is drawn
from the loader earlier than before.

A batch that arrives as uint8 images with colour parameters (``data.augmentation.photometric``
on the device) is finished here, once on the device: jittered and normalised by
``trainer.data.photometric.finish`` — on CUDA on the side stream, right after its copy, so the
augmentation of the next batch overlaps the step in flight too.
"""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from collections.abc import Iterator
from typing import Any

import torch

from trainer.data.photometric import finish


@functools.cache
def side_stream(device: torch.device) -> Any:
    """The copy stream for ``device`` (CUDA), made once per process; None elsewhere."""
    return torch.cuda.Stream(device) if device.type == "cuda" else None


class DevicePrefetch:
    def __init__(self, batches: Iterator[Any], device: torch.device) -> None:
        self.batches, self.device = batches, device
        self.stream = side_stream(device)
        self.ready: deque[tuple[Any, Any]] = deque()

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self) -> Any:
        if self.stream is None:
            return finish(next(self.batches).to(self.device))
        if not self.ready:
            self._issue()  # raises StopIteration at the end
        batch, copied = self.ready.popleft()
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(copied)
        for t in batch.tensors():
            t.record_stream(compute)
        with contextlib.suppress(StopIteration):
            self._issue()  # the next one, while this one's step runs
        return batch

    def _issue(self) -> None:
        host = next(self.batches)
        assert self.stream is not None
        with torch.cuda.stream(self.stream):
            moved = finish(host.to(self.device))
            copied = torch.cuda.Event()
            copied.record(self.stream)
        self.ready.append((moved, copied))
