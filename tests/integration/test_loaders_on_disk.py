"""Each real loader reads small datasets written in the real on-disk formats."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import datasets as tvd

from tests.helpers.fake_datasets import (
    pattern,
    write_cifar10,
    write_imagefolder,
    write_imagenet100,
    write_stl10,
)
from trainer.config import Config
from trainer.data.datasets import STL10Binary, num_classes
from trainer.data.pipeline import DataMissingError, build_eval_data, build_train_data, describe

CLASS_LIST = Path(__file__).resolve().parents[2] / "configs" / "imagenet100_classes.txt"


def make_cfg(datasets, size=32, **data):
    return Config.model_validate(
        {
            "data": {"datasets": datasets, "image_size": size, **data},
            "model": {"encoder_type": "custom", "patch_size": 8},
            "evaluation": {"max_train_samples": 1000, "max_test_samples": 1000},
        }
    )


def labels_of(ds):
    return [int(ds[i][1]) for i in range(len(ds))]


def test_cifar10_train_and_eval_splits(tmp_path):
    write_cifar10(tmp_path, n_train=53, n_test=21)
    cfg = make_cfg([{"name": "cifar10", "path": str(tmp_path)}])
    train = build_train_data(cfg)
    assert train.sizes == {"cifar10": 53} and train.epoch_size == 53
    img, _ = train.dataset[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    ev_train, ev_test = build_eval_data(cfg)
    assert (len(ev_train), len(ev_test)) == (53, 21)
    assert labels_of(ev_test) == [i % 10 for i in range(21)]
    # the eval transform keeps the picture upright: the bright quadrant stays top-left
    x, _ = ev_test[3]
    assert x[:, 4:12, 4:12].mean() > x[:, 20:28, 20:28].mean() + 1.0
    assert describe(cfg) == {"cifar10": f"{tmp_path / 'cifar-10-batches-py'} (53 train)"}


def test_stl10_trains_on_unlabeled_and_evaluates_on_labelled_splits(tmp_path):
    write_stl10(tmp_path, n_train=20, n_test=12, n_unlabeled=30)
    cfg = make_cfg([{"name": "stl10", "path": str(tmp_path)}], size=48)
    train = build_train_data(cfg)
    assert train.sizes == {"stl10": 30}
    assert set(labels_of(train.dataset)) == {-1}
    assert train.dataset[0][0].shape == (3, 48, 48)
    ev_train, ev_test = build_eval_data(cfg)
    assert (len(ev_train), len(ev_test)) == (20, 12)
    assert labels_of(ev_train) == [i % 10 for i in range(20)]  # 1-10 on disk -> 0-9


def test_stl10_images_are_upright_and_match_torchvision(tmp_path):
    folder = write_stl10(tmp_path, n_train=4, n_test=3, n_unlabeled=5)
    ours = STL10Binary(folder, "ssl")
    for i in range(5):
        img = ours.image(i).permute(1, 2, 0).numpy()
        assert np.array_equal(img, pattern(i, 96))  # exact pixels, top-left quadrant bright

    class NoHash(tvd.STL10):  # torchvision's reader without its per-file md5
        train_list = [[n, None] for n, _ in tvd.STL10.train_list]  # noqa: RUF012
        test_list = [[n, None] for n, _ in tvd.STL10.test_list]  # noqa: RUF012

    for split, tv_split in (("eval_train", "train"), ("eval_test", "test"), ("ssl", "unlabeled")):
        theirs = NoHash(str(tmp_path), split=tv_split)
        mine = STL10Binary(folder, split)
        assert len(mine) == len(theirs)
        for i in range(len(mine)):
            tv_img, tv_label = theirs[i]
            assert np.array_equal(mine.image(i).permute(1, 2, 0).numpy(), np.asarray(tv_img))
            assert mine[i][1] == tv_label


def test_imagenet100_keeps_listed_classes_in_file_order(tmp_path):
    wnids = ["n03000000", "n01000000", "n02000000"]
    lst = tmp_path / "classes.txt"
    lst.write_text("# a test list\n" + "\n".join(wnids) + "\n")
    root = write_imagenet100(
        tmp_path / "in100", lst, n_per_class=2, size=40, extra_classes=("n09999999",)
    )
    cfg = make_cfg([{"name": "imagenet100", "path": str(root)}], imagenet_class_list=str(lst))
    train = build_train_data(cfg)
    assert train.sizes == {"imagenet100": 6}  # the unlisted folder is ignored
    ev_train, ev_test = build_eval_data(cfg)
    assert ev_train.classes == wnids
    by_label = {lbl: Path(path).parent.name for path, lbl in ev_test.samples}
    assert by_label == {0: "n03000000", 1: "n01000000", 2: "n02000000"}
    assert ev_test[0][0].shape == (3, 32, 32)


def test_imagenet100_default_list_names_missing_class_folders(tmp_path):
    wnids = [s for s in CLASS_LIST.read_text().split() if s.startswith("n")]
    root = write_imagenet100(tmp_path / "in100", wnids[:97], n_per_class=1, size=16)
    cfg = make_cfg([{"name": "imagenet100", "path": str(root)}])
    with pytest.raises(DataMissingError) as err:
        build_train_data(cfg)
    msg = str(err.value)
    assert "3 of 100 class folders missing" in msg
    assert all(w in msg for w in wnids[97:])
    assert err.value.dataset == "imagenet100"


def test_imagefolder_tree(tmp_path):
    root = write_imagefolder(tmp_path / "f", ["cats", "dogs"], n_per_class=3, size=40)
    cfg = make_cfg([{"name": "imagefolder", "path": str(root)}])
    train = build_train_data(cfg)
    assert train.sizes == {"imagefolder": 6}
    _, ev_test = build_eval_data(cfg)
    assert sorted(labels_of(ev_test)) == [0, 0, 0, 1, 1, 1]


def test_class_counts_for_planning_without_opening_the_data(tmp_path):
    """Preflight sizes the linear probe by the eval set's classes before any image is read."""
    lst = tmp_path / "classes.txt"
    lst.write_text("# three\nn01\nn02\nn03\n")
    root = write_imagefolder(tmp_path / "f", ["cats", "dogs"], n_per_class=1, size=16)
    cases = [
        ([{"name": "imagefolder", "path": str(root)}], {}, 2),
        ([{"name": "imagefolder", "path": str(tmp_path / "not-yet")}], {}, 10),
        ([{"name": "imagenet100", "path": str(tmp_path)}], {"imagenet_class_list": str(lst)}, 3),
        ([{"name": "imagenet100", "path": str(tmp_path)}], {}, 100),  # the shipped list
        ([{"name": "cifar10", "path": str(tmp_path)}], {}, 10),
        ([{"name": "synthetic"}], {"synthetic": {"num_classes": 7}}, 7),
    ]
    for datasets, data, expected in cases:
        cfg = make_cfg(datasets, **data)
        assert num_classes(cfg.data.datasets[0], cfg.data) == expected, datasets


def test_weighted_multi_dataset_epoch(tmp_path):
    write_cifar10(tmp_path / "c", n_train=40, n_test=10)
    write_stl10(tmp_path / "s", n_train=10, n_test=10, n_unlabeled=60)
    cfg = make_cfg(
        [
            {"name": "cifar10", "path": str(tmp_path / "c"), "weight": 1.0},
            {"name": "stl10", "path": str(tmp_path / "s"), "weight": 3.0},
        ],
        epoch_size=80,
        batch_size=8,
        num_workers=2,
    )
    train = build_train_data(cfg)
    assert train.sizes == {"cifar10": 40, "stl10": 60} and train.epoch_size == 80
    order = list(train.sampler(epoch=1))
    assert Counter(i < 40 for i in order) == {True: 20, False: 60}
    assert list(train.sampler(epoch=1, start=24)) == order[24:]
    # real DataLoader workers (items and sampler pickle); STL (label -1) and CIFAR mix
    loader = DataLoader(
        train.dataset, batch_size=8, sampler=train.sampler(epoch=1), num_workers=2, drop_last=True
    )
    batches = list(loader)
    assert all(x.shape == (8, 3, 32, 32) for x, _ in batches)
    labels = torch.cat([y for _, y in batches])
    assert len(labels) == 80
    assert (labels == -1).sum().item() == 60


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar10", "cifar-10-batches-py"),
        ("stl10", "stl10_binary"),
        ("imagenet100", "train"),
        ("imagefolder", "train"),
    ],
)
def test_missing_dataset_names_the_path_and_the_fix(tmp_path, name, expected):
    cfg = make_cfg([{"name": name, "path": str(tmp_path / "data")}])
    with pytest.raises(DataMissingError) as err:
        build_train_data(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{name}: not found at {tmp_path / 'data' / expected}")
    assert err.value.path == str(tmp_path / "data" / expected)
    if name in ("cifar10", "stl10"):
        assert "set download: true" in msg
    with pytest.raises(DataMissingError):
        describe(cfg)


def test_damaged_files_are_a_data_error_naming_the_path(tmp_path):
    folder = write_stl10(tmp_path, n_train=2, n_test=2, n_unlabeled=3)
    with (folder / "unlabeled_X.bin").open("ab") as f:
        f.write(b"\0" * 100)  # truncated/extended: not a whole number of images
    cfg = make_cfg([{"name": "stl10", "path": str(tmp_path)}])
    with pytest.raises(DataMissingError, match=r"stl10: cannot read .*stl10_binary"):
        build_train_data(cfg)


@pytest.mark.slow
def test_loader_workers_persist_across_epochs_and_batches_stay_exact(tmp_path):
    """One TrainLoader per attempt: epoch 2 runs on epoch 1's worker processes, and every
    batch (pixels and masks) equals what a fresh loader gives for that epoch and start."""
    from trainer.data.masks import MaskCollator
    from trainer.data.pipeline import TrainLoader, train_loader

    write_cifar10(tmp_path / "data", n_train=64, n_test=16)
    cfg = make_cfg(
        [{"name": "cifar10", "path": str(tmp_path / "data")}], batch_size=8, num_workers=2
    )
    train = build_train_data(cfg)
    masks = MaskCollator(cfg.masking, cfg.data.image_size, cfg.model.patch_size, seed=0)
    cpu = torch.device("cpu")
    loader = TrainLoader(cfg, train, masks, cpu)
    first = list(loader.epoch(1, 0))
    pids = sorted(w.pid for w in loader.loader._iterator._workers)
    second = list(loader.epoch(2, 16))
    assert sorted(w.pid for w in loader.loader._iterator._workers) == pids
    assert all(w.is_alive() for w in loader.loader._iterator._workers)
    assert len(first) == 8 and len(second) == 6
    fresh = list(train_loader(cfg, train, masks, 2, 16, cpu))
    for a, b in zip(second, fresh, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.ctx_idx, b.ctx_idx)
    assert not torch.equal(first[2].images, second[0].images)  # epoch 2 is its own order
