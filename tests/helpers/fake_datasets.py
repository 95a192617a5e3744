"""Small datasets written in their REAL on-disk formats, for tests of loaders and pre-flight.

    from tests.helpers.fake_datasets import write_cifar10, write_stl10, write_imagenet100
    write_cifar10(tmp_path, n_train=50, n_test=20)         # tmp_path/cifar-10-batches-py/...
    write_stl10(tmp_path, n_train=20, n_test=10, n_unlabeled=30)   # tmp_path/stl10_binary/...
    write_imagefolder(tmp_path / "folder", ["cat", "dog"], n_per_class=3, size=40)
    write_imagenet100(tmp_path / "in100", ["n01", "n02"], n_per_class=2)

Each writer returns the folder it wrote and uses a deterministic pattern, so tests can check
pixels: image ``i`` is ``pattern(i, size)`` — a dark image whose top-left quadrant is bright
and whose red channel encodes ``i % 256`` in the bottom-right pixel (asymmetric, so a flipped
or transposed reader is caught). Labels are ``i % 10`` (CIFAR/STL; STL stores 1-10 on disk).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
STL_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def pattern(i: int, size: int) -> np.ndarray:
    """Upright HWC uint8 test image number ``i``: bright top-left quadrant, marker pixel."""
    img = np.full((size, size, 3), 20, dtype=np.uint8)
    img[: size // 2, : size // 2] = 230
    img[:, :, 1] += np.uint8(i % 7)  # a little per-image variation
    img[-1, -1, 0] = i % 256
    return img


def _cifar_batch(start: int, n: int, batch_label: str) -> dict:
    imgs = (
        np.stack([pattern(i, 32) for i in range(start, start + n)])
        if n
        else (np.zeros((0, 32, 32, 3), np.uint8))
    )
    data = imgs.transpose(0, 3, 1, 2).reshape(n, 3072)  # R plane, G plane, B plane, row order
    return {
        "batch_label": batch_label,
        "labels": [i % 10 for i in range(start, start + n)],
        "data": data,
        "filenames": [f"img_{i:05d}.png" for i in range(start, start + n)],
    }


def write_cifar10(root: str | Path, n_train: int = 50, n_test: int = 20) -> Path:
    """``root/cifar-10-batches-py/``: data_batch_1..5 (n_train split over five), test_batch,
    batches.meta, readme.html — pickles laid out as torchvision's CIFAR-10 python version."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per = [n_train // 5 + (1 if b < n_train % 5 else 0) for b in range(5)]
    start = 0
    for b, n in enumerate(per, start=1):
        batch = _cifar_batch(start, n, f"training batch {b} of 5")
        (folder / f"data_batch_{b}").write_bytes(pickle.dumps(batch, protocol=2))
        start += n
    test = _cifar_batch(0, n_test, "testing batch 1 of 1")
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {"num_cases_per_batch": 10000, "label_names": CIFAR_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    (folder / "readme.html").write_text("<meta HTTP-EQUIV='REFRESH'>\n")
    return folder


def _stl_images(start: int, n: int) -> bytes:
    if n == 0:
        return b""
    imgs = np.stack([pattern(i, 96) for i in range(start, start + n)])  # N,H,W,C upright
    # channel-first, column-major within each channel: [N, C, W, H] in C order
    return np.ascontiguousarray(imgs.transpose(0, 3, 2, 1)).tobytes()


def write_stl10(
    root: str | Path, n_train: int = 20, n_test: int = 10, n_unlabeled: int = 30
) -> Path:
    """``root/stl10_binary/``: {train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt,
    fold_indices.txt — uint8, 3×96×96 column-major per channel, labels 1-10."""
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        (folder / f"{split}_X.bin").write_bytes(_stl_images(0, n))
        (folder / f"{split}_y.bin").write_bytes(bytes(i % 10 + 1 for i in range(n)))
    (folder / "unlabeled_X.bin").write_bytes(_stl_images(0, n_unlabeled))
    (folder / "class_names.txt").write_text("\n".join(STL_NAMES) + "\n")
    folds = [" ".join(str(j) for j in range(k, n_train, 10)) for k in range(10)]
    (folder / "fold_indices.txt").write_text("\n".join(folds) + "\n")
    return folder


def write_imagefolder(
    root: str | Path,
    classes: list[str],
    n_per_class: int = 3,
    size: int = 40,
    splits: tuple[str, ...] = ("train", "val"),
) -> Path:
    """``root/<split>/<class>/img_<k>.JPEG``: real JPEGs (PIL); image k of class c is
    ``pattern(c_index * n_per_class + k, size)``."""
    root = Path(root)
    for split in splits:
        for ci, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n_per_class):
                img = Image.fromarray(pattern(ci * n_per_class + k, size))
                img.save(d / f"img_{k:04d}.JPEG", format="JPEG", quality=95)
    return root


def write_imagenet100(
    root: str | Path,
    class_list: list[str] | str | Path,
    n_per_class: int = 2,
    size: int = 40,
    extra_classes: tuple[str, ...] = (),
) -> Path:
    """An ImageNet-100 tree (``train/<wnid>/``, ``val/<wnid>/``) for the wnids of
    ``class_list`` (a list, or a class-list file with ``#`` comments), plus
    ``extra_classes`` folders that the loader must ignore."""
    if not isinstance(class_list, list):
        lines = Path(class_list).read_text().splitlines()
        class_list = [s.strip() for s in lines if s.strip() and not s.startswith("#")]
    return write_imagefolder(root, [*class_list, *extra_classes], n_per_class, size)
