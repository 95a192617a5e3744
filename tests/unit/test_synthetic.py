"""The synthetic dataset: deterministic, balanced, hard for raw pixels, easy for structure."""

import pickle

import pytest
import torch
import torch.nn.functional as F

from trainer.config import AugmentationConfig, Config
from trainer.data import synthetic
from trainer.data.pipeline import build_eval_data, build_train_data
from trainer.data.transforms import train_transform


def knn_accuracy(train_x, train_y, test_x, test_y, k=20, num_classes=10):
    """Plain cosine kNN with a majority vote over the k nearest (centred features)."""
    a = train_x.float().flatten(1)
    b = test_x.float().flatten(1)
    a = F.normalize(a - a.mean(1, keepdim=True), dim=1)
    b = F.normalize(b - b.mean(1, keepdim=True), dim=1)
    idx = (b @ a.T).topk(k, dim=1).indices
    votes = torch.zeros(len(b), num_classes).scatter_add_(1, train_y[idx], torch.ones(idx.shape))
    return (votes.argmax(1) == test_y).float().mean().item()


def test_same_seed_same_images_other_seed_other_images():
    a = synthetic.generate(64, 10, 32, seed=3, split="train")
    b = synthetic.generate(64, 10, 32, seed=3, split="train")
    c = synthetic.generate(64, 10, 32, seed=4, split="train")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_splits_differ_but_share_the_class_glyphs():
    tr = synthetic.generate(64, 10, 32, seed=0, split="eval_train")
    te = synthetic.generate(64, 10, 32, seed=0, split="eval_test")
    assert not torch.equal(tr.images, te.images)
    g1, g2 = synthetic.make_glyphs(10, 4, 0), synthetic.make_glyphs(10, 4, 0)
    assert torch.equal(g1, g2) and g1.shape == (10, 4, 4)
    shifts = [
        {torch.roll(g, (dy, dx), (0, 1)).numpy().tobytes() for dy in range(4) for dx in range(4)}
        for g in g1
    ]
    for i in range(10):  # no class's texture is a shifted copy of another's
        assert all(not (shifts[i] & shifts[j]) for j in range(i))


def test_shape_dtype_and_balanced_labels():
    out = synthetic.generate(200, 10, 48, seed=1, split="train")
    assert out.images.shape == (200, 3, 48, 48) and out.images.dtype == torch.uint8
    assert torch.bincount(out.labels, minlength=10).tolist() == [20] * 10
    assert out.images.float().std() > 15  # not blank: patterns and brightness vary


def power_spectrum(images):
    """Translation-invariant features: |FFT| of the grey image."""
    grey = images.float().mean(dim=1)
    grey = grey - grey.mean(dim=(1, 2), keepdim=True)
    return torch.fft.fft2(grey).abs().flatten(1)


@pytest.mark.slow
def test_raw_pixels_cannot_tell_classes_apart_but_spatial_structure_can():
    train = synthetic.generate(1500, 10, 32, seed=0, split="eval_train")
    test = synthetic.generate(500, 10, 32, seed=0, split="eval_test")
    raw = knn_accuracy(train.images, train.labels, test.images, test.labels)
    spectral = knn_accuracy(
        power_spectrum(train.images), train.labels, power_spectrum(test.images), test.labels
    )
    assert raw < 0.5, raw  # chance 0.1; measured 0.31: only images with the same offset match
    assert spectral > 0.9, spectral  # the repeating pattern identifies the class (1.00)
    assert spectral - raw > 0.4


def test_datasets_from_config_pickle_and_yield_normalised_tensors():
    cfg = Config.model_validate(
        {
            "data": {
                "datasets": [{"name": "synthetic"}],
                "image_size": 32,
                "synthetic": {"num_train": 64, "num_eval_train": 32, "num_eval_test": 16},
            },
            "model": {"encoder_type": "custom", "patch_size": 8},
            "evaluation": {"max_train_samples": 20},
        }
    )
    train = build_train_data(cfg)
    assert train.sizes == {"synthetic": 64} and train.epoch_size == 64
    img, label = pickle.loads(pickle.dumps(train.dataset))[5]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and 0 <= label < 10
    ev_train, ev_test = build_eval_data(cfg)
    assert (len(ev_train), len(ev_test)) == (20, 16)
    x, _ = ev_test[0]
    raw = synthetic.generate(16, 10, 32, seed=0, split="eval_test").images[0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(x, (raw.float() / 255 - mean) / std, atol=1e-5)  # eval: identity


def test_two_views_are_two_different_augmentations():
    cfg = Config.model_validate(
        {
            "data": {
                "datasets": [{"name": "synthetic"}],
                "image_size": 32,
                "synthetic": {"num_train": 16},
            },
            "model": {"encoder_type": "custom", "patch_size": 8},
        }
    )
    (v1, v2), _ = build_train_data(cfg, two_views=True).dataset[0]
    assert v1.shape == v2.shape == (3, 32, 32)
    assert not torch.equal(v1, v2)


def test_deit3_augmentation_runs_on_synthetic_images():
    img = synthetic.generate(4, 10, 32, seed=0).images[0]
    for auto in (False, True):
        aug = AugmentationConfig(
            strategy="deit3",
            color_jitter=0.4,
            deit3={"auto_augment": auto, "random_erasing_prob": 1.0},
        )
        out = train_transform(aug, 48)(img)
        assert out.shape == (3, 48, 48) and out.dtype == torch.float32
        assert (out == 0).all(dim=0).sum() > 0  # RandomErasing blanked a region
