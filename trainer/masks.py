"""I-JEPA multi-block masking, done in the DataLoader's collate function (plain CPU code).

    collator = MaskCollator(cfg.masking, cfg.data.image_size, cfg.model.patch_size, seed=42)
    loader = DataLoader(dataset, batch_size=32, collate_fn=collator)   # yields Batch

Per batch, on a g×g patch grid (g = image_size / patch_size, N = g²):

- one target block size (h, w) is drawn: scale s ~ U(mask_scale), aspect a ~ U(aspect_ratio),
  h = round(sqrt(s·N·a)), w = round(sqrt(s·N/a)), clipped to [1, g-1]; every image gets
  ``num_masks`` blocks of that size at uniform positions (they may overlap);
- one context block size is drawn (scale ~ U(context_scale), aspect 1), placed uniformly per
  image; the context is that block minus the union of the image's targets. An image left with
  fewer than ``min_keep`` context patches is redrawn (positions), after 20 tries with the whole
  grid as its context block, and after 20 more the collator raises ``ValueError`` naming the
  masking keys (such a config cannot leave ``min_keep`` patches visible);
- every image's context is cut to the batch minimum by a random subset (kept sorted), so
  ``ctx_idx`` is [B, Nc] and ``tgt_idx`` [B, M, h·w] with each block's indices in raster order
  (``tgt_idx[b, m].view(h, w)`` is the block as it lies on the grid).

Determinism: batch number ``i`` of the stream draws from a NumPy generator seeded by
(seed, i). ``collate(items, position)`` takes ``i`` from the caller (the training loop passes a
seed derived from its data position, which makes masks independent of workers and of resume by
construction). ``__call__`` counts positions itself, and ``state_dict()`` holds the seed and the
next position, so a resumed run gets the very masks it would have had. Inside a DataLoader
worker the collator is a copy: batch b of an iterator goes to worker ``b % num_workers`` (the
DataLoader's in-order dispatch), which uses position ``start + b`` — the same masks as with
``num_workers=0``. The main-process copy does not see the workers' calls, so a loop using
``__call__`` with workers calls ``seek(n)`` (n = batches consumed) before it creates each
iterator; workers must not be persistent for that to reach them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from trainer.config import MaskingConfig

_TRIES = 20


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W] float (already normalised)
    labels: torch.Tensor  # [B] long (-1 if unlabelled)
    ctx_idx: torch.Tensor  # [B, Nc] long, patch indices kept as context
    tgt_idx: torch.Tensor  # [B, M, Nt] long, M target blocks of Nt = h*w patches
    block_hw: tuple[int, int]  # (h, w) of every target block in this batch
    images2: torch.Tensor | None = None  # second augmented view (contrastive), else None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            images=self.images.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            ctx_idx=self.ctx_idx.to(device, non_blocking=non_blocking),
            tgt_idx=self.tgt_idx.to(device, non_blocking=non_blocking),
            images2=move(self.images2),
        )

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) for custom batch types."""
        return replace(
            self,
            images=self.images.pin_memory(),
            labels=self.labels.pin_memory(),
            ctx_idx=self.ctx_idx.pin_memory(),
            tgt_idx=self.tgt_idx.pin_memory(),
            images2=None if self.images2 is None else self.images2.pin_memory(),
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])


class MaskCollator:
    """DataLoader collate_fn: items ``(img, label)`` or ``((view1, view2), label)`` → Batch."""

    def __init__(self, cfg: MaskingConfig, image_size: int, patch_size: int, seed: int = 0) -> None:
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch_size}")
        self.cfg = cfg
        self.grid = image_size // patch_size
        self.num_patches = self.grid * self.grid
        self.seed = int(seed)
        self._position = 0  # next stream position (main process)
        self._worker_calls = 0  # calls seen by this copy inside a DataLoader worker

    # -- resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.seek(int(state["position"]))

    def seek(self, position: int) -> None:
        """Make the next batch (of this iterator, in-process or via workers) stream `position`."""
        self._position = int(position)
        self._worker_calls = 0

    # -- sampling --------------------------------------------------------------------------
    def _next_position(self) -> int:
        info = get_worker_info()
        if info is None:
            self._position += 1
            return self._position - 1
        pos = self._position + info.id + self._worker_calls * info.num_workers
        self._worker_calls += 1
        return pos

    def _size(
        self,
        rng: np.random.Generator,
        scale: tuple[float, float],
        aspect: tuple[float, float],
        cap: int,
    ) -> tuple[int, int]:
        s = rng.uniform(*scale)
        a = rng.uniform(*aspect)
        area = s * self.num_patches
        h = round(math.sqrt(area * a))
        w = round(math.sqrt(area / a))
        return min(max(h, 1), cap), min(max(w, 1), cap)

    def _blocks(
        self, rng: np.random.Generator, count: tuple[int, ...], h: int, w: int
    ) -> np.ndarray:
        """Random (h, w) blocks: int64 patch indices of shape count + (h*w,), raster order."""
        g = self.grid
        top = rng.integers(0, g - h + 1, size=count)
        left = rng.integers(0, g - w + 1, size=count)
        rows = top[..., None, None] + np.arange(h)[:, None]
        cols = left[..., None, None] + np.arange(w)[None, :]
        return (rows * g + cols).reshape(*count, h * w)

    def sample(
        self, batch_size: int, position: int
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Masks of stream position `position`: (ctx_idx [B, Nc], tgt_idx [B, M, h*w], (h, w))."""
        cfg, g, n = self.cfg, self.grid, self.num_patches
        rng = np.random.default_rng([self.seed, position])
        h, w = self._size(rng, cfg.mask_scale, cfg.aspect_ratio, max(g - 1, 1))
        ch, cw = self._size(rng, cfg.context_scale, (1.0, 1.0), g)
        rows = np.arange(batch_size)
        tgt = np.empty((batch_size, cfg.num_masks, h * w), dtype=np.int64)
        ctx = np.zeros((batch_size, n), dtype=bool)
        todo = rows
        for attempt in range(2 * _TRIES):
            k = len(todo)
            tgt[todo] = self._blocks(rng, (k, cfg.num_masks), h, w)
            cmask = np.zeros((k, n), dtype=bool)
            if attempt < _TRIES:
                cmask[np.arange(k)[:, None], self._blocks(rng, (k,), ch, cw)] = True
            else:
                cmask[:] = True
            cmask[np.arange(k)[:, None], tgt[todo].reshape(k, -1)] = False
            ctx[todo] = cmask
            todo = todo[cmask.sum(axis=1) < cfg.min_keep]
            if len(todo) == 0:
                break
        else:
            raise ValueError(
                f"masking leaves fewer than masking.min_keep={cfg.min_keep} context patches on "
                f"a {g}x{g} grid with {cfg.num_masks} target blocks of {h}x{w}; lower "
                "masking.num_masks / masking.mask_scale or masking.min_keep"
            )
        keep = int(ctx.sum(axis=1).min())
        keys = np.where(ctx, rng.random((batch_size, n)), 2.0)
        ctx_idx = np.sort(np.argsort(keys, axis=1, kind="stable")[:, :keep], axis=1)
        return ctx_idx, tgt, (h, w)

    def __call__(self, items: list) -> Batch:
        return self.collate(items, self._next_position())

    def collate(self, items: list, position: int) -> Batch:
        """Batch whose masks are those of stream position ``position`` (any int ≥ 0, e.g. a
        per-batch seed the loop derives from its data position); the counter is not touched."""
        first = items[0][0]
        two_views = isinstance(first, (tuple, list))
        if two_views:
            images = torch.stack([item[0][0] for item in items])
            images2: torch.Tensor | None = torch.stack([item[0][1] for item in items])
        else:
            images = torch.stack([item[0] for item in items])
            images2 = None
        labels = torch.tensor([int(item[1]) for item in items], dtype=torch.long)
        ctx_idx, tgt_idx, hw = self.sample(len(items), position)
        return Batch(
            images=images,
            labels=labels,
            ctx_idx=torch.from_numpy(ctx_idx),
            tgt_idx=torch.from_numpy(tgt_idx),
            block_hw=hw,
            images2=images2,
        )
