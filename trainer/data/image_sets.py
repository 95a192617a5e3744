"""Small labelled sets of real images that ship inside a PyPI package, written as an ImageFolder.

    python -m trainer.data.image_sets digits DIR     # DIR/train/<class>/*.png,
    DIR/val/<class>/*.png

Then train or evaluate on them like on any folder of images:

    python -m trainer --config configs/demo_conservative.yaml --run-dir var/runs/digits \\
        --set 'data.datasets=[{name: imagefolder, path: DIR}]' --set data.epoch_size=4096

Sets (no download: the images are inside the installed package):

- ``digits``: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``; UCI
  optdigits, 1,797 scans of digits written by 43 people, 10 classes, 8×8 grey levels 0-16).
  Written as 8×8 greyscale PNGs, white ink on black as scanned; the loaders resize them to
  ``data.image_size``. Split per class with a fixed seed: ``val_fraction`` (default 1/3) of each
  class to ``val/``, the rest to ``train/``. Needs scikit-learn (``pip install scikit-learn``).

The writer is deterministic (the same files for the same arguments) and refuses to mix with
other files: an existing ``DIR/train`` or ``DIR/val`` that is not this set is an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SETS = ("digits",)
_MARKER = ".image_set"


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """([N, 8, 8] uint8 in 0..255, [N] int64 labels) from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:
        raise RuntimeError(
            "the digits set ships with scikit-learn: pip install scikit-learn"
        ) from exc
    d = sk_load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


def split_per_class(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the validation items: round(val_fraction · n_c) of each class c."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        take = round(val_fraction * len(idx))
        val[rng.permutation(idx)[:take]] = True
    return val


def write_image_folder(
    out: str | Path, name: str = "digits", val_fraction: float = 1 / 3, seed: int = 0
) -> dict[str, int]:
    """Write set ``name`` under ``out`` as ``train/<class>/`` and ``val/<class>/`` PNGs.

    Returns ``{"train": n, "val": n, "classes": n}``. Rewriting the same set over itself is
    allowed (files are replaced); any other content under ``out/train`` or ``out/val`` is not.
    """
    if name not in SETS:
        raise ValueError(f"unknown image set {name!r}; use one of {list(SETS)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    root = Path(out)
    marker = root / _MARKER
    for sub in ("train", "val"):
        if (root / sub).exists() and not (marker.is_file() and marker.read_text() == name):
            raise FileExistsError(f"{root / sub} exists and was not written as {name!r}")
    images, labels = load_digits()
    val = split_per_class(labels, val_fraction, seed)
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(name)
    counts = {"train": 0, "val": 0}
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        split = "val" if val[i] else "train"
        folder = root / split / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(folder / f"{i:04d}.png")
        counts[split] += 1
    return {**counts, "classes": len(np.unique(labels))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.data.image_sets", description=__doc__.split("\n")[0]
    )
    p.add_argument("name", choices=SETS, help="which set")
    p.add_argument("out", help="directory to write train/ and val/ into")
    p.add_argument("--val-fraction", type=float, default=1 / 3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        counts = write_image_folder(args.out, args.name, args.val_fraction, args.seed)
    except (RuntimeError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.name}: {counts['train']} train + {counts['val']} val images,"
        f" {counts['classes']} classes, in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
