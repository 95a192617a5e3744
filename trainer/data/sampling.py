"""The epoch's sample order over one or several concatenated datasets.

    sampler = EpochSampler(sizes=[50000, 100000], weights=[1.0, 2.0], epoch_size=60000,
                           seed=42, epoch=3, start=1280)

Contract (what resume and the weighted multi-dataset rely on):

- Deterministic from ``(seed, epoch)`` alone: no global RNG is read or advanced, so a resumed
  run sees exactly the order the interrupted run saw.
- Dataset ``i`` contributes ``counts[i] = round(epoch_size * w_i / sum(w))`` samples (largest-
  remainder rounding, so the counts always sum to ``epoch_size``). Inside a dataset the draw is
  without replacement while ``counts[i] <= sizes[i]``; beyond that it cycles through fresh
  permutations, so every item appears ``floor`` or ``ceil`` of ``counts[i] / sizes[i]`` times.
  Indices are global (offset by the sizes of the datasets before it, as in ``ConcatDataset``).
  The chosen samples are then shuffled together.
- ``start`` skips the first ``start`` samples: ``list(EpochSampler(..., start=s))`` equals
  ``list(EpochSampler(..., start=0))[s:]`` (exact resume mid-epoch).

The object is small and picklable (it holds only numbers until iterated).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def epoch_counts(sizes: Sequence[int], weights: Sequence[float], epoch_size: int) -> list[int]:
    """Samples per dataset for one epoch: ``epoch_size * w_i / sum(w)``, largest remainder."""
    if len(sizes) != len(weights) or not sizes:
        raise ValueError("sizes and weights must be non-empty and of equal length")
    if any(w <= 0 for w in weights) or any(n <= 0 for n in sizes):
        raise ValueError(f"weights and sizes must be positive (sizes={list(sizes)})")
    total = float(sum(weights))
    exact = [epoch_size * w / total for w in weights]
    counts = [int(np.floor(x)) for x in exact]
    short = epoch_size - sum(counts)
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[:short]:
        counts[i] += 1
    return counts


def epoch_order(
    sizes: Sequence[int], weights: Sequence[float], epoch_size: int, seed: int, epoch: int
) -> np.ndarray:
    """The full order of global indices for ``epoch`` (int64 array of length ``epoch_size``)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, 0x5A17]))
    parts = []
    offset = 0
    for size, count in zip(sizes, epoch_counts(sizes, weights, epoch_size), strict=True):
        full, rest = divmod(count, size)
        draws = [rng.permutation(size) for _ in range(full)]
        if rest:
            draws.append(rng.permutation(size)[:rest])
        if draws:
            parts.append(np.concatenate(draws) + offset)
        offset += size
    order = np.concatenate(parts).astype(np.int64)
    rng.shuffle(order)
    return order


class EpochSampler(Sampler[int]):
    """Yields the epoch's global indices from ``start`` on (see the module docstring)."""

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        epoch_size: int,
        seed: int,
        epoch: int,
        start: int = 0,
    ) -> None:
        if not 0 <= start <= epoch_size:
            raise ValueError(f"start={start} is outside the epoch (0..{epoch_size})")
        self.sizes = [int(n) for n in sizes]
        self.weights = [float(w) for w in weights]
        self.epoch_size = int(epoch_size)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.start = int(start)
        self.counts = epoch_counts(self.sizes, self.weights, self.epoch_size)

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.sizes, self.weights, self.epoch_size, self.seed, self.epoch)
        return iter(order[self.start :].tolist())

    def __len__(self) -> int:
        return self.epoch_size - self.start
