"""Procedurally generated, labelled images whose class lives in spatial structure, not pixels.

    out = generate(4096, num_classes=10, size=32, seed=0, split="train")  # uint8 [N,3,S,S]

Each image shows one textured object — a soft-edged disk filled with a sinusoidal grating — on a
plain background. The class is the grating's **orientation and period** (classes cycle through
``ceil(num_classes / 2)`` orientations evenly spread over 180°, and two periods, ~4.5 px and
~9 px at 32 px, scaled with the image size). Everything else is nuisance, drawn at random per
image: the grating's phase, its two colours, the background colour, the disk's position and
radius, global brightness/contrast, a small orientation jitter and pixel noise.

Why this is a fair test of self-supervised learning: identity is spread over several patches
and only visible in how neighbouring pixels relate (phase is random, so raw pixels of two
images of one class are uncorrelated: raw-pixel kNN is near chance, see
``tests/unit/test_synthetic.py``); a randomly initialised ViT, whose mean-pooled output is
dominated by colour, is at chance too; but predicting a masked part of the disk from its context
(I-JEPA) requires encoding orientation and period, which is exactly the class.

Deterministic: each split from ``(seed, split)``. Vectorised torch on CPU (4K images at 32 px in
a fraction of a second), kept as uint8; augmentation happens at load time like real images.
``Rendered.factors`` holds the generative factors (orientation index, period index) per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PERIODS = (4.5, 9.0)  # grating periods in pixels at 32 px (scaled with the image size)
SATURATION = float(__import__("os").environ.get("SYN_SAT", "0.15"))
_SPLITS = {"train": 1, "eval_train": 2, "eval_test": 3}
_CHUNK = 512  # images rendered at once (bounds the float working set at large sizes)


@dataclass(frozen=True)
class Rendered:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: torch.Tensor  # int64 [N]
    factors: torch.Tensor  # int64 [N, 2]: orientation index, period index


def num_orientations(num_classes: int) -> int:
    return math.ceil(num_classes / len(PERIODS))


def render(labels: torch.Tensor, num_classes: int, size: int, gen: torch.Generator) -> Rendered:
    chunks = [
        _render_chunk(labels[lo : lo + _CHUNK], num_classes, size, gen)
        for lo in range(0, len(labels), _CHUNK)
    ]
    n_or = num_orientations(num_classes)
    factors = torch.stack([labels % n_or, labels // n_or], dim=1)
    return Rendered(images=torch.cat(chunks), labels=labels.clone(), factors=factors)


def _render_chunk(
    labels: torch.Tensor, num_classes: int, size: int, gen: torch.Generator
) -> torch.Tensor:
    n, s = len(labels), float(size)

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    n_or = num_orientations(num_classes)
    theta = (labels % n_or).float() * math.pi / n_or + u(n, lo=-0.08, hi=0.08)
    period = torch.tensor(PERIODS)[labels // n_or] * (s / 32.0) * u(n, lo=0.9, hi=1.1)
    phase = u(n, hi=2 * math.pi)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    xx, yy = coords.view(1, 1, -1), coords.view(1, -1, 1)
    proj = torch.cos(theta)[:, None, None] * xx + torch.sin(theta)[:, None, None] * yy
    wave = 0.5 + 0.5 * torch.sin(2 * math.pi * proj / period[:, None, None] + phase[:, None, None])
    cx, cy = u(n, 1, 1, lo=0.3 * s, hi=0.7 * s), u(n, 1, 1, lo=0.3 * s, hi=0.7 * s)
    radius = u(n, 1, 1, lo=0.3 * s, hi=0.45 * s)
    window = (radius - torch.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)).clamp(0, 1)[:, None]
    bg = u(n, 3, 1, 1, lo=0.1, hi=0.9)
    c1, c2 = u(n, 3, 1, 1), u(n, 3, 1, 1)
    texture = c1 + (c2 - c1) * wave[:, None]
    img = bg * (1 - window) + texture * window
    gain = u(n, 1, 1, 1, lo=0.7, hi=1.2)
    img = (img - 0.5) * gain + 0.5 + u(n, 1, 1, 1, lo=-0.1, hi=0.1)
    grey = img.mean(dim=1, keepdim=True)
    img = grey + SATURATION * (img - grey)
    img = img + torch.randn(img.shape, generator=gen) * 0.05
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def generate(
    num_images: int, num_classes: int, size: int, seed: int, split: str = "train"
) -> Rendered:
    """A balanced split (labels cycle through the classes, then shuffle), deterministic."""
    if split not in _SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; use one of {sorted(_SPLITS)}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + _SPLITS[split])
    labels = torch.arange(num_images) % num_classes
    labels = labels[torch.randperm(num_images, generator=gen)]
    return render(labels, num_classes, size, gen)
