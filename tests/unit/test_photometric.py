"""Colour augmentation on the device (trainer/data/photometric.py): the same pictures as the host
pipeline from the same seed, each image with its own parameters, and the seams that carry it
(collate, prefetch, config)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.config import AugmentationConfig, Config
from trainer.data.masks import Batch, MaskCollator
from trainer.data.photometric import (
    HostGeometry,
    Photometric,
    apply,
    finish,
    photometric_on_device,
)
from trainer.data.prefetch import DevicePrefetch
from trainer.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform

CPU = torch.device("cpu")
STD = torch.tensor(IMAGENET_STD).reshape(3, 1, 1)
MEAN = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)


def picture(seed: int, h: int = 40, w: int = 36) -> Image.Image:
    """A colourful RGB picture: smooth gradients plus noise, every hue present."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy - seed), np.sin(4 * (xx + yy))], -1)
    img = (0.5 + 0.4 * base + 0.1 * rng.standard_normal((h, w, 3))).clip(0, 1)
    return Image.fromarray((255 * img).astype(np.uint8))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Normalised float → [0, 1] pixels."""
    return x * STD + MEAN


@pytest.mark.parametrize("jitter", [0.0, 0.5, 2.0])
def test_device_half_gives_the_host_pipelines_picture_from_the_same_seed(jitter):
    aug = AugmentationConfig(crop_scale=(0.3, 1.0), horizontal_flip=True, color_jitter=jitter)
    host, split = train_transform(aug, 32), HostGeometry(aug, 32)
    for seed in range(12):
        img = picture(seed)
        torch.manual_seed(seed)
        want = host(img)
        torch.manual_seed(seed)
        view = split(img)
        assert view.image.dtype == torch.uint8 and view.image.shape == (3, 32, 32)
        got = apply(view.image[None], view.params[None])[0]
        diff = (to_unit(got) - to_unit(want)).abs()
        # torchvision truncates to uint8 after every jitter operation on the host (measured:
        # up to 2.0/255 darker on average, 4.5/255 at most); the device stays in float.
        # Without jitter the two agree to float rounding.
        assert diff.mean() < 2.5 / 255, (seed, diff.mean())
        assert diff.max() < 6.0 / 255, (seed, diff.max())


def test_each_image_gets_its_own_order_and_factors():
    aug = AugmentationConfig(color_jitter=2.0)
    split = HostGeometry(aug, 24)
    views = []
    for seed in range(8):
        torch.manual_seed(seed)
        views.append(split(picture(seed, 24, 24)))
    orders = {tuple(v.params[:4].tolist()) for v in views}
    assert len(orders) > 1  # the draw really varies the order
    images = torch.stack([v.image for v in views])
    params = torch.stack([v.params for v in views])
    batched = apply(images, params)
    for i, v in enumerate(views):
        alone = apply(v.image[None], v.params[None])[0]
        torch.testing.assert_close(batched[i], alone)


def test_no_jitter_is_only_conversion_and_normalisation():
    split = HostGeometry(AugmentationConfig(color_jitter=0.0, horizontal_flip=False), 16)
    view = split(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8))
    assert view.params.tolist() == [0.0, 1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 0.0]
    got = apply(view.image[None], view.params[None])[0]
    torch.testing.assert_close(got, (view.image.float() / 255 - MEAN) / STD)


def test_grey_images_become_three_channels():
    split = HostGeometry(AugmentationConfig(color_jitter=1.0), 16)
    view = split(Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), mode="L"))
    assert view.image.shape == (3, 16, 16)


def test_views_and_transform_pickle_for_loader_workers():
    split = HostGeometry(AugmentationConfig(color_jitter=1.0), 16)
    view = pickle.loads(pickle.dumps(split))(picture(1, 20, 20))
    again = pickle.loads(pickle.dumps(view))
    assert isinstance(again, Photometric)
    assert torch.equal(again.image, view.image) and torch.equal(again.params, view.params)


def test_collate_carries_uint8_views_and_the_prefetcher_finishes_them():
    cfg = cfg_with()
    masks = MaskCollator(cfg.masking, 16, 4, seed=0)
    split = HostGeometry(AugmentationConfig(color_jitter=1.0), 16)
    items = []
    for seed in range(4):
        torch.manual_seed(seed)
        items.append(((split(picture(seed)), split(picture(seed + 9))), seed))
    batch = masks.collate(items, position=0)
    assert batch.images.dtype == torch.uint8 and batch.colour.shape == (4, 8)
    assert batch.images2.dtype == torch.uint8 and batch.colour2.shape == (4, 8)
    assert len(batch.tensors()) == 8  # the parameters travel with the batch
    (done,) = list(DevicePrefetch(iter([batch]), CPU))
    assert done.colour is None and done.colour2 is None
    assert done.images.dtype == torch.float32 and done.images2.dtype == torch.float32
    torch.testing.assert_close(done.images, apply(batch.images, batch.colour))
    torch.testing.assert_close(done.images2, apply(batch.images2, batch.colour2))
    assert not torch.equal(done.images, done.images2)
    # a batch already finished (host pipeline) passes through untouched
    assert finish(done) is done
    plain = masks.collate([(torch.zeros(3, 16, 16), 0)] * 2, position=0)
    assert isinstance(plain, Batch) and plain.colour is None


def cfg_with(**aug) -> Config:
    return Config.model_validate(
        {
            "model": {"encoder_type": "custom", "patch_size": 4},
            "data": {"datasets": [{"name": "synthetic"}], "augmentation": aug},
        }
    )


def test_auto_puts_colour_on_the_device_only_on_cuda_with_basic_augmentation():
    cuda, mps = torch.device("cuda"), torch.device("mps")
    assert photometric_on_device(cfg_with(), cuda)
    assert not photometric_on_device(cfg_with(), CPU)
    assert not photometric_on_device(cfg_with(), mps)
    assert not photometric_on_device(cfg_with(strategy="deit3"), cuda)
    assert photometric_on_device(cfg_with(photometric="device"), CPU)
    assert not photometric_on_device(cfg_with(photometric="host"), cuda)


def test_device_with_deit3_is_refused_by_the_schema():
    with pytest.raises(ValueError, match="photometric: device needs strategy: basic"):
        cfg_with(photometric="device", strategy="deit3")
    with pytest.raises(ValueError, match="photometric"):
        cfg_with(photometric="gpu")
