"""``hjepa-night data imagenet100``: the 100-class subset built from an ImageNet-1k copy.

    hjepa-night data imagenet100 --from /datasets/ILSVRC2012 [--to ./data/imagenet]
        [--val-labels FILE] [--copy] [--force]

Reads the shipped class list (``configs/imagenet100_classes.txt`` through the one resolver of
shipped files) and writes ``TO/train/<wnid>/`` and ``TO/val/<wnid>/`` — the layout the
aggressive recipe reads — as symbolic links, not copies: a train class folder is one link to
the source's class folder; validation images are linked one by one into their class folder
(``--copy`` copies instead, for a target that must outlive the source).

Source layouts (``--from DIR``): ``DIR/train/<wnid>/`` and ``DIR/val/`` (ILSVRC-2012 as
extracted), or Kaggle's ``DIR/ILSVRC/Data/CLS-LOC/{train,val}/``. Validation labels, the first
found of: ``val/<wnid>/`` folders (already sorted); ``--val-labels FILE``; ``LOC_val_solution.csv``
(``ImageId,PredictionString``, the wnid first) in DIR; the devkit's
``ILSVRC2012_validation_ground_truth.txt`` with its ``meta.mat`` (read with scipy; without scipy
the command says to use ``LOC_val_solution.csv``). Counts are checked: 1,300 train and 50 val
images per class in ILSVRC-2012 (a few train classes have fewer: 732 at least); any other count
is listed, and a class with no images fails the build.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trainer.config.paths import resolve_data

CLASS_LIST = "configs/imagenet100_classes.txt"
TRAIN_PER_CLASS, VAL_PER_CLASS = 1300, 50
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class BuildError(RuntimeError):
    """The source cannot give the subset; the message says what is missing and where."""


@dataclass
class Built:
    target: Path
    train: dict[str, int] = field(default_factory=dict)
    val: dict[str, int] = field(default_factory=dict)
    labels_from: str = ""
    linked: str = "symlink"


def read_classes(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def find_split(src: Path, split: str) -> Path | None:
    for cand in (src / split, src / "ILSVRC" / "Data" / "CLS-LOC" / split):
        if cand.is_dir():
            return cand
    return None


def labels_from_csv(path: Path) -> dict[str, str]:
    """``LOC_val_solution.csv``: image id (file stem) -> wnid (first token of the boxes)."""
    out = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            tokens = (row.get("PredictionString") or "").split()
            if row.get("ImageId") and tokens:
                out[row["ImageId"]] = tokens[0]
    if not out:
        raise BuildError(f"{path}: no ImageId,PredictionString rows")
    return out


def labels_from_devkit(truth: Path, meta: Path) -> dict[str, str]:
    """The devkit's ground truth (one ILSVRC2012_ID per val image, in order) through meta.mat."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise BuildError(
            f"{meta} needs scipy to read (pip install scipy), or give the labels as"
            " LOC_val_solution.csv (--val-labels FILE)"
        ) from None
    synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
    wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    ids = [int(x) for x in truth.read_text().split()]
    return {f"ILSVRC2012_val_{i:08d}": wnid_of[c] for i, c in enumerate(ids, start=1)}


def val_labels(src: Path, given: Path | None) -> tuple[dict[str, str], str]:
    """(image stem -> wnid, where the labels came from) for a flat val folder."""
    if given is not None:
        if given.suffix == ".csv":
            return labels_from_csv(given), str(given)
        meta = given.parent / "meta.mat"
        return labels_from_devkit(given, meta), f"{given} + {meta}"
    for csv_path in (src / "LOC_val_solution.csv", src.parent / "LOC_val_solution.csv"):
        if csv_path.is_file():
            return labels_from_csv(csv_path), str(csv_path)
    for truth in sorted(src.rglob("ILSVRC2012_validation_ground_truth.txt")):
        meta = truth.parent / "meta.mat"
        if meta.is_file():
            return labels_from_devkit(truth, meta), f"{truth} + {meta}"
    raise BuildError(
        f"no validation labels under {src}: expected val/<wnid>/ folders, LOC_val_solution.csv,"
        " or the devkit's data/ILSVRC2012_validation_ground_truth.txt with meta.mat (or give"
        " --val-labels FILE)"
    )


def _link(src: Path, dst: Path, copy: bool) -> str:
    if copy:
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        return "copy"
    try:
        dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())
        return "symlink"
    except OSError:  # a filesystem without symlinks: hard links for files, else copies
        if src.is_file():
            try:
                os.link(src, dst)
                return "hardlink"
            except OSError:
                pass
        return _link(src, dst, True)


def _clear(path: Path, force: bool) -> None:
    if not (path.exists() or path.is_symlink()):
        return
    if not force:
        raise BuildError(f"{path} exists; move it away or pass --force to rebuild it")
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def build(
    src: Path,
    target: Path,
    classes: list[str],
    val_labels_file: Path | None = None,
    copy: bool = False,
    force: bool = False,
) -> Built:
    """Link (or copy) the ``classes`` of an ImageNet-1k tree at ``src`` into ``target``."""
    train_src, val_src = find_split(src, "train"), find_split(src, "val")
    if train_src is None or val_src is None:
        raise BuildError(
            f"{src}: expected train/ and val/ (ILSVRC-2012 as extracted) or"
            " ILSVRC/Data/CLS-LOC/{train,val}/"
        )
    absent = [c for c in classes if not (train_src / c).is_dir()]
    if absent:
        shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise BuildError(f"{len(absent)} of {len(classes)} classes not in {train_src}: {shown}")
    out = Built(target)
    sorted_val = all((val_src / c).is_dir() for c in classes)
    by_class: dict[str, list[Path]] = {c: [] for c in classes}
    if sorted_val:
        out.labels_from = f"{val_src}/<wnid>/"
        for c in classes:
            by_class[c] = _images(val_src / c)
    else:
        labels, out.labels_from = val_labels(src, val_labels_file)
        for img in _images(val_src):
            wnid = labels.get(img.stem)
            if wnid in by_class:
                by_class[wnid].append(img)
    for c in classes:
        dst = target / "train" / c
        _clear(dst, force)
        dst.parent.mkdir(parents=True, exist_ok=True)
        out.linked = _link(train_src / c, dst, copy)
        out.train[c] = len(_images(dst))
        vdst = target / "val" / c
        _clear(vdst, force)
        vdst.mkdir(parents=True)
        for img in by_class[c]:
            _link(img, vdst / img.name, copy)
        out.val[c] = len(by_class[c])
    return out


def _off(counts: dict[str, int], want: int) -> list[str]:
    return [f"{c} {n:,}" for c, n in counts.items() if n != want]


def summary(b: Built) -> tuple[list[str], bool]:
    """Lines for the user, and whether the subset is usable (every class has images)."""
    n_train, n_val = sum(b.train.values()), sum(b.val.values())
    lines = [
        f"ImageNet-100 in {b.target}: {len(b.train)} classes, {n_train:,} train and {n_val:,}"
        f" val images ({b.linked}s, not copies)" if b.linked != "copy" else
        f"ImageNet-100 in {b.target}: {len(b.train)} classes, {n_train:,} train and {n_val:,}"
        " val images (copied)",
        f"validation labels from {b.labels_from}",
    ]  # fmt: skip
    for split, counts, want in (("train", b.train, TRAIN_PER_CLASS), ("val", b.val, VAL_PER_CLASS)):
        off = _off(counts, want)
        if not off:
            lines.append(f"{split}: {want:,} images in every class, as in ILSVRC-2012")
        else:
            shown = ", ".join(off[:10]) + (f" ... ({len(off)} classes)" if len(off) > 10 else "")
            lines.append(f"{split}: not {want:,} per class in {len(off)} class(es): {shown}")
    empty = [f"{s}/{c}" for s, d in (("train", b.train), ("val", b.val)) for c, n in d.items()
             if n == 0]  # fmt: skip
    if empty:
        lines.append(f"no images in {', '.join(empty[:10])}: the subset is not usable")
    return lines, not empty


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``hjepa-night data ...`` on the command line's subcommands."""
    sp = sub.add_parser("data", help="build datasets that cannot be downloaded")
    what = sp.add_subparsers(dest="dataset", required=True)
    im = what.add_parser("imagenet100", help="the 100-class subset from an ImageNet-1k copy")
    im.add_argument("--from", dest="source", required=True, help="ImageNet-1k (ILSVRC-2012) root")
    im.add_argument("--to", default="./data/imagenet", help="target (./data/imagenet)")
    im.add_argument("--val-labels", default=None, help="LOC_val_solution.csv or the devkit's "
                    "ILSVRC2012_validation_ground_truth.txt (meta.mat beside it)")  # fmt: skip
    im.add_argument("--classes", default=CLASS_LIST, help=f"class list ({CLASS_LIST})")
    im.add_argument("--copy", action="store_true", help="copy the images instead of linking")
    im.add_argument("--force", action="store_true", help="replace class folders already there")


def cmd_data(args: argparse.Namespace) -> int:
    src = Path(args.source).expanduser()
    classes_file = resolve_data(args.classes)
    try:
        if not src.is_dir():
            raise BuildError(f"--from {src}: not a directory")
        if not classes_file.is_file():
            raise BuildError(f"class list {classes_file} not found")
        labels = Path(args.val_labels) if args.val_labels else None
        built = build(src, Path(args.to), read_classes(classes_file), labels, args.copy, args.force)
    except (BuildError, OSError, KeyError, ValueError) as exc:
        print(f"hjepa-night: {exc}", file=sys.stderr)
        return 2
    lines, usable = summary(built)
    print("\n".join(lines))
    return 0 if usable else 1
