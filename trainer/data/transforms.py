"""Training and evaluation transforms (torchvision.transforms.v2), from ``data.augmentation``.

    train_tf = train_transform(cfg.data.augmentation, image_size=224)
    eval_tf = eval_transform(image_size=224)

Inputs may be PIL images or uint8 CHW tensors; outputs are float32 CHW tensors normalised
with the ImageNet mean/std (every dataset, so a multi-dataset batch is homogeneous).

Training (in this order; each step only when its knob asks for it):
  random resized crop to ``image_size`` with ``crop_scale`` → horizontal flip →
  colour jitter ``cj`` (brightness/contrast 0.4·cj, saturation 0.2·cj, hue 0.1·cj, the upstream
  formula) → deit3: AutoAugment (ImageNet policy) if ``deit3.auto_augment`` else RandAugment
  (``rand_aug_num_ops``, ``rand_aug_magnitude``) → to float, normalise → deit3: RandomErasing
  (``random_erasing_prob``).
Evaluation: resize the short side to round(1.14·image_size), centre crop ``image_size``;
``resize=False`` (synthetic data, already at size) only converts and normalises.

``TwoViews`` wraps a transform to return two independent augmentations (contrastive loss).
All transform objects are picklable (DataLoader workers with fork or spawn).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

from trainer.config import AugmentationConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_RESIZE_RATIO = 1.14


def _to_normalised_float() -> list[Any]:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ]


def geometry(aug: AugmentationConfig, image_size: int) -> list[Any]:
    """The geometric steps of training: to image, random resized crop, horizontal flip."""
    lo, hi = aug.crop_scale
    steps: list[Any] = [
        v2.ToImage(),
        v2.RandomResizedCrop(image_size, scale=(lo, hi), antialias=True),
    ]
    if aug.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    return steps


def color_jitter(aug: AugmentationConfig) -> v2.ColorJitter | None:
    """Colour jitter ``cj`` (brightness/contrast 0.4·cj, saturation 0.2·cj, hue 0.1·cj), or
    None when ``cj`` is 0."""
    cj = aug.color_jitter
    if cj <= 0:
        return None
    return v2.ColorJitter(
        brightness=0.4 * cj, contrast=0.4 * cj, saturation=0.2 * cj, hue=min(0.1 * cj, 0.5)
    )


def train_transform(aug: AugmentationConfig, image_size: int) -> v2.Compose:
    """The training augmentation pipeline described in the module docstring (all on the host;
    ``trainer.data.photometric`` splits it with the device)."""
    steps = geometry(aug, image_size)
    jitter = color_jitter(aug)
    if jitter is not None:
        steps.append(jitter)
    if aug.strategy == "deit3":
        d = aug.deit3
        if d.auto_augment:
            steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
        else:
            steps.append(v2.RandAugment(num_ops=d.rand_aug_num_ops, magnitude=d.rand_aug_magnitude))
    steps += _to_normalised_float()
    if aug.strategy == "deit3" and aug.deit3.random_erasing_prob > 0:
        steps.append(v2.RandomErasing(p=aug.deit3.random_erasing_prob, value=0))
    return v2.Compose(steps)


def eval_transform(image_size: int, resize: bool = True) -> v2.Compose:
    """Resize to ~1.14·size and centre-crop (or, ``resize=False``, only normalise)."""
    steps: list[Any] = []
    if resize:
        steps = [
            v2.ToImage(),
            v2.Resize(round(EVAL_RESIZE_RATIO * image_size), antialias=True),
            v2.CenterCrop(image_size),
        ]
    return v2.Compose(steps + _to_normalised_float())


class TwoViews:
    """Apply ``transform`` twice, independently: ``img -> (view1, view2)``."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, img: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(img), self.transform(img)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"
