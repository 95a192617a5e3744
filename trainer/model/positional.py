"""Randomness tied to the data position, so a resumed run sees exactly the same batches.

Every sample of an epoch gets a seed derived from (experiment seed, epoch, position in the
epoch). The dataset wrapper seeds torch/python RNGs with it before the item's random transforms,
and the collate function seeds the mask sampler from the batch's first item. The augmentations
and masks of step k are therefore the same whether the run was interrupted or not, and whatever
the number of data-loader workers.

With several ranks the epoch's positions are dealt in chunks of one micro-batch: chunk ``c``
(positions ``start + c·micro ..``) goes to rank ``c % world``. One optimizer step of the group
(``micro × accumulation × world`` samples) is therefore one contiguous run of positions, every
sample keeps the seed of its position, and a resume at another world size continues at the
same position with the same samples and augmentations.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

_MASK64 = (1 << 63) - 1


def item_seed(seed: int, epoch: int, position: int) -> int:
    """A well-mixed 63-bit seed (splitmix64 of the triple)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + position) & ((1 << 64) - 1)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 31
    return x & _MASK64


class PositionalSampler(Sampler[tuple[int, int]]):
    """Yields (dataset index, item seed) for positions ``start .. start + count`` of an epoch;
    with ``world > 1`` only this ``rank``'s chunks of ``micro`` positions (module docstring).
    ``count`` is a multiple of ``micro × world``."""

    def __init__(
        self,
        order: Sampler[int],
        seed: int,
        epoch: int,
        start: int,
        count: int,
        rank: int = 0,
        world: int = 1,
        micro: int = 1,
    ):
        self.order, self.seed, self.epoch, self.start, self.count = order, seed, epoch, start, count
        self.rank, self.world, self.micro = rank, world, micro

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i, idx in enumerate(self.order):
            if i >= self.count:
                return
            if self.world > 1 and (i // self.micro) % self.world != self.rank:
                continue
            yield int(idx), item_seed(self.seed, self.epoch, self.start + i)

    def __len__(self) -> int:
        return self.count // self.world if self.world > 1 else self.count


class SeededDataset(Dataset):
    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, Any, int]:
        idx, s = key
        torch.manual_seed(s)
        random.seed(s)
        x, y = self.base[idx]
        return x, y, s

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]


class SeededCollate:
    """Wraps the mask collator: the batch's masks come from its first item's seed."""

    def __init__(self, mask_collator: Any) -> None:
        self.masks = mask_collator

    def __call__(self, items: list[tuple[Any, Any, int]]) -> Any:
        return self.masks.collate([(x, y) for x, y, _ in items], position=items[0][2])
