"""Member datasets on disk: CIFAR-10, STL-10, ImageNet-100, any image-folder tree, synthetic.

    ds = open_split(spec, "ssl", transform, cfg.data)       # what SSL trains on
    ds = open_split(spec, "eval_test", transform, cfg.data) # labelled held-out split

Splits per dataset (``ssl`` / ``eval_train`` / ``eval_test``):

| name        | on disk (under ``spec.path``)          | ssl            | eval_train | eval_test |
|-------------|----------------------------------------|----------------|------------|-----------|
| cifar10     | ``cifar-10-batches-py/`` (torchvision) | train (50K)    | train      | test      |
| stl10       | ``stl10_binary/`` (torchvision)        | unlabeled 100K | train (5K) | test (8K) |
| imagenet100 | ``train/<wnid>/``, ``val/<wnid>/``     | train          | train      | val       |
| imagefolder | ``train/<class>/``, ``val/<class>/``   | train          | train      | val       |
| synthetic   | in memory (``trainer/data/synthetic.py``)   | train          | eval_train |
eval_test |

Items are ``(transform(image), label)``; STL-10's unlabeled split has label -1.

Deliberate differences from plain torchvision, each for a measured or stated reason:
- CIFAR-10 and STL-10 check that every file is present instead of hashing them (torchvision
  hashes each file on every construction: ~3 GB for STL-10 at every start and every eval;
  small generated test files could not pass at all). ``download: true`` fetches torchvision's
  archive and verifies its md5 (``trainer/data/fetch.py``, with a progress bar and mirrors).
- STL-10 is read through ``np.memmap`` (torchvision reads 2.76 GB of ``unlabeled_X.bin`` into
  RAM and, with spawn-started DataLoader workers as on macOS, pickles it into every worker). The
  byte layout is torchvision's: uint8, 3×96×96 per image, column-major per channel; images are
  returned upright (a test compares against torchvision's own reader).
- ImageNet-100 lists only the wanted class folders (in class-list order, labels 0-99); it does
  not scan every sample against a list (upstream did; 30-50 % slower).
A missing dataset raises :class:`DataMissingError` naming the dataset, the path, and the fix;
so does one that is present but unreadable (truncated or damaged files).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from trainer.config import DataConfig, DatasetSpec
from trainer.config.paths import resolve_data
from trainer.data import synthetic
from trainer.data.fetch import FetchError, approx_size, fetch

SPLITS = ("ssl", "eval_train", "eval_test")
DEFAULT_CLASS_LIST = "configs/imagenet100_classes.txt"  # through trainer.config.paths
STL_IMAGE_BYTES = 3 * 96 * 96


class DataMissingError(RuntimeError):
    """A dataset is not where the config says; the message names it, the path and the fix."""

    def __init__(self, dataset: str, path: str | Path, message: str) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.path = str(path)


# -------------------------------------------------------------------------------- CIFAR-10
class CIFAR10Files(tvd.CIFAR10):
    """torchvision's CIFAR-10 reader with a presence check instead of per-file md5."""

    train_list: ClassVar[list[list[Any]]] = [[n, None] for n, _ in tvd.CIFAR10.train_list]
    test_list: ClassVar[list[list[Any]]] = [[n, None] for n, _ in tvd.CIFAR10.test_list]
    meta: ClassVar[dict[str, Any]] = {**tvd.CIFAR10.meta, "md5": None}


def _open_cifar10(spec: DatasetSpec, split: str, transform: Any, fetch_ok: bool = True) -> Dataset:
    folder = Path(spec.path) / CIFAR10Files.base_folder
    needed = [n for n, _ in CIFAR10Files.train_list + CIFAR10Files.test_list]
    needed.append(CIFAR10Files.meta["filename"])
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing and spec.download and fetch_ok:
        _download("cifar10", spec.path)
        missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise DataMissingError(
            "cifar10",
            folder,
            f"cifar10: not found at {folder} (missing {', '.join(missing)}) — "
            + _how_to_get("cifar10", spec)
            + ", or put torchvision's CIFAR-10 python version there (data_batch_1..5,"
            " test_batch, batches.meta)",
        )
    return CIFAR10Files(spec.path, train=split != "eval_test", transform=transform)


# -------------------------------------------------------------------------------- STL-10
_STL_FILES = {
    "ssl": ("unlabeled_X.bin", None),
    "eval_train": ("train_X.bin", "train_y.bin"),
    "eval_test": ("test_X.bin", "test_y.bin"),
}


class STL10Binary(Dataset):
    """One STL-10 split read lazily from ``stl10_binary/*.bin`` (memmap, reopened per process)."""

    def __init__(self, folder: str | Path, split: str, transform: Any = None) -> None:
        self.folder = Path(folder)
        self.transform = transform
        x_name, y_name = _STL_FILES[split]
        self.x_path = self.folder / x_name
        nbytes = self.x_path.stat().st_size
        if nbytes % STL_IMAGE_BYTES:
            raise ValueError(f"{self.x_path}: {nbytes} bytes is not a whole number of images")
        self.num_images = nbytes // STL_IMAGE_BYTES
        if y_name is None:
            self.labels = np.full(self.num_images, -1, dtype=np.int64)
        else:
            self.labels = np.fromfile(self.folder / y_name, dtype=np.uint8).astype(np.int64) - 1
            if len(self.labels) != self.num_images:
                raise ValueError(
                    f"{self.folder / y_name}: {len(self.labels)} labels for {self.num_images}"
                    f" images in {self.x_path.name}"
                )
        self._images: np.ndarray | None = None

    def _array(self) -> np.ndarray:
        if self._images is None:
            raw = np.memmap(self.x_path, dtype=np.uint8, mode="r")
            self._images = raw.reshape(self.num_images, 3, 96, 96)
        return self._images

    def image(self, index: int) -> torch.Tensor:
        """Upright uint8 CHW image (the file stores each channel column-major)."""
        return torch.from_numpy(np.ascontiguousarray(self._array()[index].transpose(0, 2, 1)))

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])

    def __len__(self) -> int:
        return self.num_images

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None}  # workers reopen the memmap


def _open_stl10(spec: DatasetSpec, split: str, transform: Any, fetch_ok: bool = True) -> Dataset:
    folder = Path(spec.path) / tvd.STL10.base_folder
    needed = [n for n in _STL_FILES[split] if n is not None]
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing and spec.download and fetch_ok:
        _download("stl10", spec.path)
        missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise DataMissingError(
            "stl10",
            folder,
            f"stl10: not found at {folder} (missing {', '.join(missing)}) — "
            + _how_to_get("stl10", spec)
            + ", or extract torchvision's stl10_binary.tar.gz there",
        )
    return STL10Binary(folder, split, transform)


# -------------------------------------------------------------------------------- folders
class ClassFolders(tvd.ImageFolder):
    """An ImageFolder over exactly ``classes`` (in that order, labels 0..n-1)."""

    def __init__(self, root: str | Path, classes: list[str], transform: Any = None) -> None:
        self._wanted = list(classes)
        super().__init__(str(root), transform=transform)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        return self._wanted, {c: i for i, c in enumerate(self._wanted)}


def read_class_list(path: str | Path) -> list[str]:
    """Class ids, one a line; blank lines and ``#`` comments skipped."""
    lines = Path(path).read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def class_list_path(data: DataConfig) -> Path:
    """``data.imagenet_class_list`` or the shipped list, through the one resolver of shipped
    files (relative paths: the working directory first, then the clone or the wheel's data)."""
    return resolve_data(data.imagenet_class_list or DEFAULT_CLASS_LIST)


def _folder_root(spec: DatasetSpec, split: str) -> Path:
    return Path(spec.path) / ("val" if split == "eval_test" else "train")


def _open_imagenet100(spec: DatasetSpec, split: str, transform: Any, data: DataConfig) -> Dataset:
    root = _folder_root(spec, split)
    list_file = class_list_path(data)
    if not root.is_dir():
        raise DataMissingError(
            "imagenet100",
            root,
            f"imagenet100: not found at {root} — expected {spec.path}/train/<wnid>/ and"
            f" {spec.path}/val/<wnid>/ for the classes in {list_file}; ImageNet-100 is not"
            " downloadable: build it from an ImageNet-1k (ILSVRC-2012) copy with"
            f" `hjepa-night data imagenet100 --from DIR --to {spec.path}` (links, not copies)",
        )
    if not list_file.is_file():
        raise DataMissingError(
            "imagenet100", list_file, f"imagenet100: class list {list_file} not found"
        )
    classes = read_class_list(list_file)
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise DataMissingError(
            "imagenet100",
            root,
            f"imagenet100: {len(missing)} of {len(classes)} class folders missing under {root}:"
            f" {shown} (class list {list_file}); rebuild it with `hjepa-night data imagenet100"
            f" --from DIR --to {spec.path}`",
        )
    return ClassFolders(root, classes, transform)


def _open_imagefolder(spec: DatasetSpec, split: str, transform: Any) -> Dataset:
    root = _folder_root(spec, split)
    if not root.is_dir() or not any(e.is_dir() for e in os.scandir(root)):
        raise DataMissingError(
            "imagefolder",
            root,
            f"imagefolder: not found at {root} — expected {spec.path}/train/<class>/ and"
            f" {spec.path}/val/<class>/ folders of images",
        )
    return tvd.ImageFolder(str(root), transform=transform)


# -------------------------------------------------------------------------------- synthetic
class SyntheticImages(Dataset):
    """Generated uint8 images kept in memory; ``(transform(image), label)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any = None) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])

    def __len__(self) -> int:
        return len(self.labels)


def _open_synthetic(split: str, transform: Any, data: DataConfig) -> Dataset:
    s = data.synthetic
    n = {"ssl": s.num_train, "eval_train": s.num_eval_train, "eval_test": s.num_eval_test}[split]
    name = "train" if split == "ssl" else split
    out = synthetic.generate(n, s.num_classes, data.image_size, s.seed, name)
    return SyntheticImages(out.images, out.labels, transform)


# -------------------------------------------------------------------------------- entry
def open_split(
    spec: DatasetSpec, split: str, transform: Any, data: DataConfig, fetch_ok: bool = True
) -> Dataset:
    """The ``split`` (one of SPLITS) of ``spec`` with ``transform`` applied to each image; a
    missing ``download: true`` dataset is downloaded first unless ``fetch_ok`` is False."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    try:
        return _open(spec, split, transform, data, fetch_ok)
    except DataMissingError:
        raise
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:  # present, unreadable
        where = location(spec, split)
        raise DataMissingError(
            spec.name,
            where or "",
            f"{spec.name}: cannot read {where} ({type(exc).__name__}:"
            f" {exc}) — the files are damaged or not in the expected format; delete them and"
            " download again",
        ) from exc


def _open(
    spec: DatasetSpec, split: str, transform: Any, data: DataConfig, fetch_ok: bool
) -> Dataset:
    if spec.name == "cifar10":
        return _open_cifar10(spec, split, transform, fetch_ok)
    if spec.name == "stl10":
        return _open_stl10(spec, split, transform, fetch_ok)
    if spec.name == "imagenet100":
        return _open_imagenet100(spec, split, transform, data)
    if spec.name == "imagefolder":
        return _open_imagefolder(spec, split, transform)
    return _open_synthetic(split, transform, data)


def location(spec: DatasetSpec, split: str = "ssl") -> Path | None:
    """Where ``spec``'s split lives on disk (None for synthetic), for messages."""
    if spec.name == "cifar10":
        return Path(spec.path) / CIFAR10Files.base_folder
    if spec.name == "stl10":
        return Path(spec.path) / tvd.STL10.base_folder
    if spec.name == "synthetic":
        return None
    return _folder_root(spec, split)


def num_classes(spec: DatasetSpec, data: DataConfig) -> int:
    """How many classes ``spec``'s labelled splits have, without opening them (10 for a folder
    that is not there yet, so planning works before the data is in place)."""
    if spec.name in ("cifar10", "stl10"):
        return 10
    if spec.name == "synthetic":
        return data.synthetic.num_classes
    if spec.name == "imagenet100":
        list_file = class_list_path(data)
        return len(read_class_list(list_file)) if list_file.is_file() else 100
    root = _folder_root(spec, "eval_train")
    if not root.is_dir():
        return 10
    return max(1, sum(1 for e in os.scandir(root) if e.is_dir()))


def _how_to_get(name: str, spec: DatasetSpec) -> str:
    size = approx_size(name)
    if spec.download:
        return (
            f"download: true fetches it ({size}) when `hjepa-night start` or `run` checks the"
            " plan, or now with `python -m trainer --check --fetch --config FILE`"
        )
    return f"set download: true in data.datasets (needs internet, {size})"


def _download(name: str, path: str) -> None:
    try:
        fetch(name, path)
    except FetchError as exc:  # no network, bad archive, full disk: say what and where
        raise DataMissingError(name, path, str(exc)) from exc
