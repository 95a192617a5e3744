"""I-JEPA multi-block masking, done in the DataLoader's collate function (plain CPU code).

    collator = MaskCollator(cfg.masking, cfg.data.image_size, cfg.model.patch_size, seed=42)
    loader = DataLoader(dataset, batch_size=32, collate_fn=collator)   # yields Batch

**Static shapes.** Every batch of a run has the same token counts, so one compiled graph
serves the whole run: ``ctx_idx`` is [B, Nc] and ``tgt_idx`` [B, M, Nt] with
``Nc = collator.context_tokens`` and ``Nt = collator.target_tokens`` fixed at construction
(``masking.context_tokens`` / ``masking.target_tokens``, or derived from the mask scales:
see :func:`auto_target_tokens` and :func:`auto_context_tokens`).

Per batch, on a g×g patch grid (g = image_size / patch_size, N = g²):

- one target block shape is drawn: aspect a ~ U(aspect_ratio), width w = round(sqrt(Nt/a)),
  height h = ceil(Nt/w) (both clipped to [1, g-1]); a target block is the first Nt patches, in
  raster order, of an h×w rectangle (full rows, the last row possibly partial), and every image
  gets ``num_masks`` such blocks at uniform positions (they may overlap). Its area is Nt for
  every batch (the mean of ``mask_scale``); only the aspect varies;
- one context block size is drawn (scale ~ U(context_scale), aspect 1), placed uniformly per
  image; the context is that block minus the union of the image's targets. An image left with
  fewer than max(Nc, ``min_keep``) context patches is redrawn (positions), after 20 tries with
  the whole grid as its context block, and after 20 more the collator raises ``ValueError``
  naming the masking keys;
- every image's context is cut to exactly Nc patches by a random subset (kept sorted) — the
  reference cuts to the batch minimum instead, a count that changes every batch.
- ``tgt_pool`` [3, Nt, Nt] holds, for hierarchy levels 1..3, the averaging matrix that pools a
  block's Nt tokens spatially into cells of 2^l × 2^l (adaptive bins over the h×w box, empty
  cells dropped, rows padded with zeros): see :func:`pool_matrices` and trainer.model.losses.

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
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from trainer.config import MaskingConfig
from trainer.data.photometric import Photometric
from trainer.data.photometric import stack as stack_photometric
from trainer.runtime.copies import to_device

_TRIES = 20
POOL_LEVELS = 3  # hierarchy levels 1..3 get a pooling matrix (model.num_hierarchies <= 4)
_CONTEXT_QUANTILE = 0.05  # auto context count: this quantile of the per-image context size
_ESTIMATE_IMAGES = 4096  # images drawn (fixed seed) to estimate that quantile


_TENSOR_FIELDS = (
    "images",
    "labels",
    "ctx_idx",
    "tgt_idx",
    "tgt_pool",
    "images2",
    "colour",
    "colour2",
)


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W] float (normalised); uint8 while ``colour`` is set
    labels: torch.Tensor  # [B] long (-1 if unlabelled)
    ctx_idx: torch.Tensor  # [B, Nc] long, patch indices kept as context
    tgt_idx: torch.Tensor  # [B, M, Nt] long, M target blocks of Nt patches (raster order)
    tgt_pool: torch.Tensor  # [POOL_LEVELS, Nt, Nt] float, level-l pooling (see pool_matrices)
    block_hw: tuple[int, int]  # (h, w) box of every target block in this batch
    images2: torch.Tensor | None = None  # second augmented view (contrastive), else None
    # [B, 8] colour-jitter parameters of uint8 images still to be finished on the device
    # (trainer.data.photometric.finish, which the prefetcher applies); None once finished / on host
    colour: torch.Tensor | None = None
    colour2: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device``: asynchronously only where that is safe (pinned host memory to
        CUDA, ``trainer.runtime.copies.to_device``), a plain copy elsewhere."""
        dev = torch.device(device)
        return self._map(lambda t: to_device(t, dev))

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) for custom batch types."""
        return self._map(lambda t: t.pin_memory())

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the batch holds (``images2`` only when present)."""
        return [t for t in (getattr(self, f) for f in _TENSOR_FIELDS) if t is not None]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        """The batch with ``fn`` applied to every tensor (``block_hw`` and a None view kept)."""
        return replace(
            self,
            **{f: fn(t) for f in _TENSOR_FIELDS if (t := getattr(self, f)) is not None},
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _bins(n: int, out: int) -> np.ndarray:
    """[out, n] bool: bin i of adaptive average pooling covers floor(i·n/out)..ceil((i+1)·n/out)."""
    i = np.arange(out)[:, None]
    j = np.arange(n)[None, :]
    return (j >= (i * n) // out) & (j < ((i + 1) * n + out - 1) // out)


def pool_matrices(nt: int, w: int, levels: int = POOL_LEVELS) -> np.ndarray:
    """[levels, nt, nt] float32: row c of matrix l-1 averages the tokens of cell c at level l.

    The block is the first ``nt`` tokens (raster order) of a ceil(nt/w) × w box. Level l splits
    the box into ceil(h/2^l) × ceil(w/2^l) adaptive-pooling cells (bins as adaptive_avg_pool2d);
    each cell averages the block tokens inside it, cells holding none are dropped, and the
    remaining rows are zero (so a loss summed over rows and divided by the number of non-zero
    rows is the mean over cells). For a full rectangle this is exactly adaptive_avg_pool2d.
    """
    h = -(-nt // w)
    rows, cols = np.arange(nt) // w, np.arange(nt) % w
    out = np.zeros((levels, nt, nt), dtype=np.float32)
    for lvl in range(1, levels + 1):
        oh, ow = -(-h // 2**lvl), -(-w // 2**lvl)
        rb, cb = _bins(h, oh)[:, rows], _bins(w, ow)[:, cols]  # [oh, nt], [ow, nt]
        inside = (rb[:, None, :] & cb[None, :, :]).reshape(oh * ow, nt)
        inside = inside[inside.any(axis=1)]
        out[lvl - 1, : len(inside)] = inside / inside.sum(axis=1, keepdims=True)
    return out


def auto_target_tokens(cfg: MaskingConfig, grid: int) -> int:
    """Patches per target block when ``masking.target_tokens`` is unset: round(mean scale · N)."""
    return max(1, round(sum(cfg.mask_scale) / 2 * grid * grid))


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
        cap = max(self.grid - 1, 1)
        self.target_tokens = cfg.target_tokens or auto_target_tokens(cfg, self.grid)
        if self.target_tokens > cap * cap:
            raise ValueError(
                f"masking.target_tokens / masking.mask_scale: {self.target_tokens} patches per "
                f"target block do not fit a {cap}x{cap} box on a {self.grid}x{self.grid} grid"
            )
        self.context_tokens = cfg.context_tokens or auto_context_tokens(
            cfg, self.grid, self.target_tokens
        )
        if self.context_tokens > self.num_patches:
            raise ValueError(
                f"masking.context_tokens {self.context_tokens} exceeds the {self.num_patches} "
                "patches of the grid"
            )
        self._pools: dict[int, torch.Tensor] = {}

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

    def _target_shape(self, rng: np.random.Generator) -> tuple[int, int]:
        """(h, w) box of this batch's target blocks: aspect drawn, area fixed at Nt."""
        nt, cap = self.target_tokens, max(self.grid - 1, 1)
        a = rng.uniform(*self.cfg.aspect_ratio)
        w = round(math.sqrt(nt / a))
        w = min(max(w, 1, -(-nt // cap)), cap)
        return -(-nt // w), w

    def _context_size(self, rng: np.random.Generator) -> tuple[int, int]:
        s = rng.uniform(*self.cfg.context_scale)
        side = round(math.sqrt(s * self.num_patches))
        side = min(max(side, 1), self.grid)
        return side, side

    def _blocks(
        self, rng: np.random.Generator, count: tuple[int, ...], h: int, w: int, n: int
    ) -> np.ndarray:
        """Random blocks: int64 indices of shape count + (n,), the first n of an h×w box."""
        g = self.grid
        top = rng.integers(0, g - h + 1, size=count)
        left = rng.integers(0, g - w + 1, size=count)
        rows = top[..., None, None] + np.arange(h)[:, None]
        cols = left[..., None, None] + np.arange(w)[None, :]
        return (rows * g + cols).reshape(*count, h * w)[..., :n]

    def _draw(
        self,
        rng: np.random.Generator,
        k: int,
        hw: tuple[int, int],
        chw: tuple[int, int],
        whole_grid: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Targets [k, M, Nt] and context masks [k, N] (bool) for k images."""
        (h, w), (ch, cw) = hw, chw
        tgt = self._blocks(rng, (k, self.cfg.num_masks), h, w, self.target_tokens)
        cmask = np.zeros((k, self.num_patches), dtype=bool)
        if whole_grid:
            cmask[:] = True
        else:
            cmask[np.arange(k)[:, None], self._blocks(rng, (k,), ch, cw, ch * cw)] = True
        cmask[np.arange(k)[:, None], tgt.reshape(k, -1)] = False
        return tgt, cmask

    def sample(
        self, batch_size: int, position: int
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Masks of stream position `position`: (ctx_idx [B, Nc], tgt_idx [B, M, Nt], (h, w))."""
        cfg, g, n = self.cfg, self.grid, self.num_patches
        rng = np.random.default_rng([self.seed, position])
        hw = self._target_shape(rng)
        chw = self._context_size(rng)
        need = max(self.context_tokens, cfg.min_keep)
        tgt = np.empty((batch_size, cfg.num_masks, self.target_tokens), dtype=np.int64)
        ctx = np.zeros((batch_size, n), dtype=bool)
        todo = np.arange(batch_size)
        for attempt in range(2 * _TRIES):
            tgt[todo], ctx[todo] = self._draw(rng, len(todo), hw, chw, attempt >= _TRIES)
            todo = todo[ctx[todo].sum(axis=1) < need]
            if len(todo) == 0:
                break
        else:
            raise ValueError(
                f"masking leaves fewer than {need} context patches (masking.context_tokens="
                f"{self.context_tokens}, masking.min_keep={cfg.min_keep}) on a {g}x{g} grid "
                f"with {cfg.num_masks} target blocks of {self.target_tokens} patches; lower "
                "masking.num_masks / masking.mask_scale / masking.context_tokens or "
                "masking.min_keep"
            )
        keys = np.where(ctx, rng.random((batch_size, n)), 2.0)
        order = np.argsort(keys, axis=1, kind="stable")[:, : self.context_tokens]
        return np.sort(order, axis=1), tgt, hw

    def pool(self, w: int) -> torch.Tensor:
        """The [POOL_LEVELS, Nt, Nt] pooling matrices for blocks of width w (cached)."""
        if w not in self._pools:
            self._pools[w] = torch.from_numpy(pool_matrices(self.target_tokens, w))
        return self._pools[w]

    def __call__(self, items: list) -> Batch:
        return self.collate(items, self._next_position())

    def collate(self, items: list, position: int) -> Batch:
        """Batch whose masks are those of stream position ``position`` (any int ≥ 0, e.g. a
        per-batch seed the loop derives from its data position); the counter is not touched."""
        first = items[0][0]
        two_views = isinstance(first, (tuple, list))
        images, colour = _stack([item[0][0] if two_views else item[0] for item in items])
        images2 = colour2 = None
        if two_views:
            images2, colour2 = _stack([item[0][1] for item in items])
        labels = torch.tensor([int(item[1]) for item in items], dtype=torch.long)
        ctx_idx, tgt_idx, hw = self.sample(len(items), position)
        return Batch(
            images=images,
            labels=labels,
            ctx_idx=torch.from_numpy(ctx_idx),
            tgt_idx=torch.from_numpy(tgt_idx),
            tgt_pool=self.pool(hw[1]),
            block_hw=hw,
            images2=images2,
            colour=colour,
            colour2=colour2,
        )


def _stack(views: list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float views → (images, None); host-geometry views (trainer.data.photometric) → (uint8
    images, their colour parameters)."""
    if isinstance(views[0], Photometric):
        return stack_photometric(views)
    return torch.stack(views), None


def auto_context_tokens(cfg: MaskingConfig, grid: int, target_tokens: int) -> int:
    """Context patches per image when ``masking.context_tokens`` is unset.

    The 5% quantile of the per-image context size (context block minus the targets) over
    4,096 images drawn with a fixed seed, at least ``min_keep``: about what the reference's
    cut to the batch minimum keeps at batch 8 (I-JEPA ViT-S/16 224: 63 on average), while 95%
    of images need no redraw. Deterministic in the config and the grid; costs a few ms.
    """
    probe = MaskCollator.__new__(MaskCollator)
    probe.cfg, probe.grid, probe.num_patches = cfg, grid, grid * grid
    probe.target_tokens = target_tokens
    rng = np.random.default_rng([0x5EED, grid, target_tokens])
    sizes = []
    for _ in range(_ESTIMATE_IMAGES // 64):
        _, cmask = probe._draw(rng, 64, probe._target_shape(rng), probe._context_size(rng), False)
        sizes.append(cmask.sum(axis=1))
    q = int(np.quantile(np.concatenate(sizes), _CONTEXT_QUANTILE))
    return max(q, cfg.min_keep, 1)
