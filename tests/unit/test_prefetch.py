"""Batches reach the device before the step needs them (CUDA), and never early elsewhere."""

from __future__ import annotations

import pytest
import torch

from trainer.data.masks import Batch
from trainer.data.prefetch import DevicePrefetch


def _batch(i: int) -> Batch:
    return Batch(
        images=torch.full((2, 3, 4, 4), float(i)),
        labels=torch.tensor([i, i]),
        ctx_idx=torch.zeros(2, 3, dtype=torch.long),
        tgt_idx=torch.zeros(2, 1, 2, dtype=torch.long),
        tgt_pool=torch.eye(2).expand(3, 2, 2).clone(),
        block_hw=(1, 2),
    )


class Counting:
    """An iterator that records how many batches were drawn from it."""

    def __init__(self, n: int, pin: bool = False) -> None:
        self.n, self.drawn, self.pin = n, 0, pin

    def __iter__(self) -> Counting:
        return self

    def __next__(self) -> Batch:
        if self.drawn == self.n:
            raise StopIteration
        self.drawn += 1
        b = _batch(self.drawn)
        return b.pin_memory() if self.pin else b


def test_on_the_cpu_each_batch_is_drawn_when_asked_for_and_the_end_is_the_end():
    source = Counting(3)
    batches = DevicePrefetch(source, torch.device("cpu"))
    got = []
    for b in batches:
        got.append(int(b.labels[0]))
        assert source.drawn == len(got)  # nothing drawn ahead of the step
    assert got == [1, 2, 3]
    with pytest.raises(StopIteration):
        next(batches)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_next_batch_is_already_on_its_way():
    source = Counting(3, pin=True)
    batches = DevicePrefetch(source, torch.device("cuda"))
    first = next(batches)
    assert source.drawn == 2  # batch 2 is being copied while batch 1's step runs
    assert first.images.is_cuda and float(first.images.sum()) == first.images.numel()
    rest = list(batches)
    assert [int(b.labels[0]) for b in rest] == [2, 3]
    assert all(b.ctx_idx.is_cuda and b.tgt_pool.is_cuda for b in rest)


def test_one_side_stream_per_process_not_one_per_epoch(monkeypatch):
    """The loop builds a prefetcher per epoch; each used to make its own CUDA stream, and the
    caching allocator keeps a block pool per stream, so every finished epoch left its pool
    reserved. Without a GPU the stream constructor is recorded; the prefetchers are real."""
    from trainer.data import prefetch

    made: list[object] = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: made.append(device) or object())
    cuda = torch.device("cuda", 0)
    try:
        streams = {id(DevicePrefetch(iter([]), cuda).stream) for _epoch in range(3)}
        assert len(made) == 1 and len(streams) == 1
        assert DevicePrefetch(iter([]), torch.device("cpu")).stream is None
    finally:
        cache_clear = getattr(prefetch, "side_stream", None)
        if cache_clear is not None:
            cache_clear.cache_clear()  # drop the recorded stand-in
