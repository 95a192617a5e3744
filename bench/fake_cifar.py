"""python bench/fake_cifar.py DIR [--train 50000] [--test 10000] [--seed 0]

Writes random uint8 images in CIFAR-10's python on-disk format (``DIR/cifar-10-batches-py/``:
``data_batch_1..5``, ``test_batch``, ``batches.meta``; pickled dicts with ``data`` [n, 3072]
uint8 rows in CHW order and ``labels``), which ``trainer.data.datasets`` reads like the real thing.
For loader throughput where the real dataset is absent (a bare GPU host): same size, same
decode and augmentation cost, meaningless content. Existing files are left alone.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
_CLASSES = [
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


def _write(path: Path, rng: np.random.Generator, n: int) -> None:
    entry = {
        "batch_label": path.name,
        "labels": rng.integers(0, 10, size=n).tolist(),
        "data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),
        "filenames": [f"{path.name}_{i}.png" for i in range(n)],
    }
    with path.open("wb") as f:
        pickle.dump(entry, f, protocol=4)


def write_fake_cifar(
    root: str | Path, train: int = 50000, test: int = 10000, seed: int = 0
) -> Path:
    """Create ``root/cifar-10-batches-py`` if absent; returns that folder."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_file = -(-train // len(_TRAIN_FILES))
    for i, name in enumerate(_TRAIN_FILES):
        n = max(0, min(per_file, train - i * per_file))
        if not (folder / name).exists():
            _write(folder / name, rng, n)
    if not (folder / "test_batch").exists():
        _write(folder / "test_batch", rng, test)
    meta = folder / "batches.meta"
    if not meta.exists():
        with meta.open("wb") as f:
            pickle.dump(
                {"label_names": _CLASSES, "num_cases_per_batch": per_file, "num_vis": 3072},
                f,
                protocol=4,
            )
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Random images in CIFAR-10's on-disk format.")
    ap.add_argument("root")
    ap.add_argument("--train", type=int, default=50000)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(write_fake_cifar(a.root, a.train, a.test, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
