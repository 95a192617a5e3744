"""Procedurally generated, labelled images whose class lives in spatial structure, not pixels.

    out = generate(4096, num_classes=10, size=32, seed=0, split="train")  # uint8 [N,3,S,S]

Each class is a **glyph**: a random binary pattern on a small square tile of an odd number of
pixels (``(size // 8) | 1``: 5 px at 32 px). An image of class ``c`` is glyph ``c`` tiled over
the whole image — a periodic texture — drawn with nuisance variation per image: a random offset
of the tiling (so the same pixel position shows a different part of the glyph from one image to
the next), dark ink on a light ground (two random colours of low saturation, the ink always the
darker), global brightness/contrast and Gaussian pixel noise.

Why an odd tile and a fixed polarity: a tile as wide as a ViT patch puts one whole period in
every patch, so each patch token sees a cyclic shift of the glyph and a linear read-out of the
pooled tokens has nothing stable to find (the linear probe stayed at chance while kNN learned);
with an odd tile the period drifts across patches and pooled features carry the pattern. Free
polarity (ink lighter or darker than the ground at random) made every class two textures.

Why this is a fair test of self-supervised learning: identity is "which pattern repeats",
visible only in how neighbouring pixels relate. Raw pixels of two images of one class are
barely correlated (random offset and colours: raw-pixel kNN is poor, see
``tests/unit/test_synthetic.py``), while a translation-invariant statistic (the power spectrum)
identifies the class. A randomly initialised ViT sits well below what training reaches:
predicting a masked region from its context (I-JEPA) requires knowing the pattern, so the
encoder has to learn it.

Deterministic: glyphs from ``seed``; each split from ``(seed, split)``. Vectorised torch on CPU
(4K images at 32 px in a fraction of a second), kept as uint8; augmentation happens at load time
like real images. ``Rendered.offsets`` holds the tiling offset (the main nuisance) per image.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

DENSITY = 0.4  # fraction of "on" cells in a glyph
SATURATION = 0.15  # colourfulness (0: grey levels only); low, so colour does not dominate
_SPLITS = {"train": 1, "eval_train": 2, "eval_test": 3}
_CHUNK = 512  # images rendered at once (bounds the float working set at large sizes)


@dataclass(frozen=True)
class Rendered:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: torch.Tensor  # int64 [N]
    offsets: torch.Tensor  # int64 [N, 2]: (y, x) offset of the tiling


def tile_size(size: int) -> int:
    return max(3, (size // 8) | 1)


def make_glyphs(num_classes: int, tile: int, seed: int) -> torch.Tensor:
    """``num_classes`` distinct binary glyphs [C, tile, tile]; no glyph is a cyclic shift of
    another (else two classes would draw the same textures)."""
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    glyphs: list[torch.Tensor] = []
    seen: set[bytes] = set()
    while len(glyphs) < num_classes:
        g = (torch.rand(tile, tile, generator=gen) < DENSITY).to(torch.uint8)
        if not 2 <= int(g.sum()) <= tile * tile - 2:
            continue
        shifts = {
            torch.roll(g, (dy, dx), (0, 1)).numpy().tobytes()
            for dy in range(tile)
            for dx in range(tile)
        }
        if shifts & seen:
            continue
        seen |= shifts
        glyphs.append(g)
    return torch.stack(glyphs).float()


def render(labels: torch.Tensor, glyphs: torch.Tensor, size: int, gen: torch.Generator) -> Rendered:
    tile = glyphs.shape[-1]
    offsets = torch.randint(0, tile, (len(labels), 2), generator=gen)
    chunks = [
        _render_chunk(labels[lo : lo + _CHUNK], offsets[lo : lo + _CHUNK], glyphs, size, gen)
        for lo in range(0, len(labels), _CHUNK)
    ]
    return Rendered(images=torch.cat(chunks), labels=labels.clone(), offsets=offsets)


def _render_chunk(
    labels: torch.Tensor,
    offsets: torch.Tensor,
    glyphs: torch.Tensor,
    size: int,
    gen: torch.Generator,
) -> torch.Tensor:
    n, tile = len(labels), glyphs.shape[-1]

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    ys = (torch.arange(size)[None, :] + offsets[:, :1]) % tile  # [n, S]
    xs = (torch.arange(size)[None, :] + offsets[:, 1:]) % tile
    pattern = glyphs[labels[:, None, None], ys[:, :, None], xs[:, None, :]]  # [n, S, S]
    bg, fg = u(n, 3, 1, 1, lo=0.55, hi=0.95), u(n, 3, 1, 1, lo=0.05, hi=0.45)
    img = bg + (fg - bg) * pattern[:, None]
    grey = img.mean(dim=1, keepdim=True)
    img = grey + SATURATION * (img - grey)
    gain = u(n, 1, 1, 1, lo=0.7, hi=1.2)
    img = (img - 0.5) * gain + 0.5 + u(n, 1, 1, 1, lo=-0.1, hi=0.1)
    img = img + torch.randn(img.shape, generator=gen) * 0.05
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


@functools.lru_cache(maxsize=4)
def generate(
    num_images: int, num_classes: int, size: int, seed: int, split: str = "train"
) -> Rendered:
    """A balanced split (labels cycle through the classes, then shuffle), deterministic.
    Made once per process and arguments (its datasets only read it): the feature probe builds
    one worker per configuration in one process (``trainer/train/modes.py``)."""
    if split not in _SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; use one of {sorted(_SPLITS)}")
    glyphs = make_glyphs(num_classes, tile_size(size), seed)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + _SPLITS[split])
    labels = torch.arange(num_images) % num_classes
    labels = labels[torch.randperm(num_images, generator=gen)]
    return render(labels, glyphs, size, gen)
