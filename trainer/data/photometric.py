"""Colour augmentation as batched tensor ops on the device; the host keeps only the geometry.

    on = photometric_on_device(cfg, device)          # data.augmentation.photometric
    tf = HostGeometry(cfg.data.augmentation, 224)    # the loader's transform when ``on``
    batch = finish(batch.to(device))                 # trainer.data.prefetch does this

Why: on the host, colour jitter is the most expensive step of the training transform (the whole
host pipeline costs 3.1 ms per CIFAR image at 224 px on one core, the geometry alone 0.29 ms),
so a handful of loader workers capped a CUDA step that can take thousands of images a second.
Split at the point where the work becomes per-pixel arithmetic:

- **Host** (loader workers, :class:`HostGeometry`): decode → random resized crop (antialiased,
  in uint8) → horizontal flip, exactly as ``trainer.data.transforms.train_transform``; then it only
  *draws* the colour-jitter parameters (order and four factors, torchvision's ``ColorJitter``
  draw, so the same seed gives the same numbers as the host pipeline) and returns a
  :class:`Photometric`: the uint8 image and 8 floats. A batch is a quarter of the bytes of a
  float batch to pin and copy.
- **Device** (:func:`finish`, on the prefetcher's side stream on CUDA so it overlaps the step
  in flight): uint8 → float, the four jitter operations in each image's own order, with each
  image's own factors (torchvision's formulas: blend with black / the grey mean / the grey
  image, hue rotated in HSV; clamped to [0, 1] after each), then the ImageNet normalisation.

Every parameter is drawn on the host from the item's positional seed (trainer/model/positional.py),
so augmentations stay seeded per sample and exact resume still holds; the device part is
deterministic arithmetic. Against the host pipeline the only difference is rounding: on uint8
torchvision truncates after each jitter operation (the host's pictures come out up to ~2/255
darker on average), the device computes in float32 (tested: same seed, mean absolute
difference under 2.5/255, at most 6/255; without jitter equal to float rounding).

``data.augmentation.photometric``: ``host`` (everything on the host, as before), ``device``
(the split above on any device; CPU runs it in the main process, useful only for tests), or
``auto`` (default): ``device`` on CUDA with ``strategy: basic``, ``host`` elsewhere — on a CPU
the loader workers run beside the step with nothing to offload to, and on MPS the host pipeline
has not been measured slower. ``strategy: deit3`` (AutoAugment / RandAugment / RandomErasing,
which run on the host in torchvision) always keeps the host pipeline; asking for ``device``
with it is a config error.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import torch
from torchvision.transforms import v2

from trainer.config import AugmentationConfig, Config
from trainer.data.transforms import IMAGENET_MEAN, IMAGENET_STD, color_jitter, geometry

# One image's colour parameters: the order in which brightness/contrast/saturation/hue (0..3)
# apply, then their factors (identity values when jitter is off: 1, 1, 1, 0).
PARAMS = 8
_IDENTITY = (1.0, 1.0, 1.0, 0.0)
_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def photometric_on_device(cfg: Config, device: torch.device) -> bool:
    """Whether this run does colour augmentation on the device (module docstring; the schema
    already refuses ``device`` with ``strategy: deit3``)."""
    aug = cfg.data.augmentation
    if aug.photometric == "auto":
        return device.type == "cuda" and aug.strategy == "basic"
    return aug.photometric == "device"


class Photometric:
    """A loader item's view: the uint8 image after the geometry, and its colour parameters."""

    __slots__ = ("image", "params")

    def __init__(self, image: torch.Tensor, params: torch.Tensor) -> None:
        self.image, self.params = image, params

    def __getstate__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image, self.params

    def __setstate__(self, state: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.image, self.params = state


class HostGeometry:
    """The host half of the training transform: ``image -> Photometric`` (picklable)."""

    def __init__(self, aug: AugmentationConfig, image_size: int) -> None:
        self.geometry = v2.Compose([*geometry(aug, image_size), v2.ToDtype(torch.uint8)])
        self.jitter = color_jitter(aug)

    def __call__(self, img: Any) -> Photometric:
        image = self.geometry(img).as_subclass(torch.Tensor)
        if image.shape[0] == 1:  # a grey image: the host pipeline's jitter would keep it grey
            image = image.expand(3, -1, -1)
        return Photometric(image.contiguous(), self._draw())

    def _draw(self) -> torch.Tensor:
        """Order + factors, drawn as torchvision's ColorJitter draws them (same RNG calls)."""
        if self.jitter is None:
            return torch.tensor([0.0, 1.0, 2.0, 3.0, *_IDENTITY])
        draw = getattr(self.jitter, "make_params", None) or self.jitter._get_params
        p = draw([])
        keys = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
        factors = [d if p[k] is None else float(p[k]) for k, d in zip(keys, _IDENTITY, strict=True)]
        return torch.tensor([*p["fn_idx"].tolist(), *factors], dtype=torch.float32)

    def __repr__(self) -> str:
        return f"HostGeometry({self.geometry!r}, jitter={self.jitter!r})"


def stack(views: list[Photometric]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of views → (uint8 images [B, 3, H, W], params [B, PARAMS])."""
    return torch.stack([v.image for v in views]), torch.stack([v.params for v in views])


def finish(batch: Any) -> Any:
    """The device half: a batch whose ``colour`` is set gets its images (and ``images2``)
    jittered and normalised where they are, and ``colour`` cleared; any other batch is
    returned as it is."""
    if batch.colour is None:
        return batch
    images2 = batch.images2
    if images2 is not None:
        images2 = apply(images2, batch.colour2)
    return replace(
        batch, images=apply(batch.images, batch.colour), images2=images2, colour=None, colour2=None
    )


def apply(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] + params [B, PARAMS] → normalised float32 [B, 3, H, W].

    At each of the four positions every image takes its own operation: brightness, contrast
    and saturation are one blend ``r·x + (1 − r)·other`` (other = black, the grey mean, the grey
    image; r = 1 leaves an image exactly as it is), then the hue rotation, kept only for the
    images whose operation at this position is hue. No host sync, no shape that depends on
    the parameters."""
    x = images.float().div_(255.0)
    b = params.shape[0]
    order = params[:, :4].round().long()
    factors = params[:, 4:]
    for position in range(4):
        op = order[:, position]
        is_hue = (op == 3).reshape(b, 1, 1, 1)
        ratio = factors.gather(1, op.clamp(max=2)[:, None]).reshape(b, 1, 1, 1)
        ratio = torch.where(is_hue, torch.ones_like(ratio), ratio)
        grey = _grey(x)
        mean = grey.mean(dim=(1, 2, 3), keepdim=True)
        other = torch.where(
            (op == 0).reshape(b, 1, 1, 1),
            torch.zeros_like(grey),
            torch.where((op == 1).reshape(b, 1, 1, 1), mean.expand_as(grey), grey),
        )
        x = _blend(x, other, ratio)
        x = torch.where(is_hue, _hue(x, factors[:, 3]), x)
    mean, std, _ = _constants(x.device)
    return (x - mean) / std


def _grey(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GREY[0] * r + _GREY[1] * g + _GREY[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor | float, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio * x + (1.0 - ratio) * other).clamp_(0.0, 1.0)


@functools.cache
def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalisation mean and std and the HSV → RGB channel offsets (5, 3, 1), each
    [1, 3, 1, 1], made once per device (a tensor built from Python numbers on every call
    would be a host → device copy)."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).reshape(1, 3, 1, 1)
    offsets = torch.tensor([5.0, 3.0, 1.0], device=device).reshape(1, 3, 1, 1)
    return mean, std, offsets


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of [B, 3, H, W] by ``f`` [B] (a fraction of the circle) in HSV, with
    torchvision's RGB → HSV and the closed-form HSV → RGB (elementwise only: no channel
    reductions, table lookups or float remainders, which are the slow kernels here)."""
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    span = maxc - minc
    flat = span == 0
    s = span / torch.where(flat, torch.ones_like(maxc), maxc)
    div = torch.where(flat, torch.ones_like(span), span)
    h = torch.where(
        maxc == r,
        (g - b) / div,
        torch.where(maxc == g, 2.0 + (b - r) / div, 4.0 + (r - g) / div),
    )  # in (-1, 5): sixths of the circle
    h = torch.where(flat, torch.zeros_like(h), h) + 6.0 * f.reshape(-1, 1, 1)  # |f| <= 0.5
    h = h + 6.0 * (h < 0) - 6.0 * (h >= 6.0)  # → [0, 6)
    # channel n of (r, g, b) = v − v·s·clamp(min(k, 4 − k), 0, 1) with k = (n + h) mod 6,
    # n = 5, 3, 1
    k = _constants(x.device)[2] + h.unsqueeze(1)
    k = k - 6.0 * (k >= 6.0)
    return maxc.unsqueeze(1) * (1.0 - s.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
