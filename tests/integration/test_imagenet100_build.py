"""``hjepa-night data imagenet100`` on a tiny ImageNet-1k tree built here: links not copies,
val images sorted by LOC_val_solution.csv or the devkit's labels, counts said, and the worker's
ImageNet-100 loader reading the result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestrator.preflight.imagenet100 import BuildError, build, read_classes, summary
from tests.workerutil import ROOT, env

pytestmark = pytest.mark.slow  # real processes


CLASSES = read_classes(ROOT / "configs" / "imagenet100_classes.txt")
EXTRA = ["n99999901", "n99999902"]  # ImageNet-1k classes outside the subset


def fake_imagenet(root: Path, n_train: int = 3, n_val: int = 2, short: str | None = None) -> dict:
    """``root/train/<wnid>/*.JPEG`` and a flat ``root/val/`` for the subset's classes plus two
    others; ``short`` gets one val image fewer. Returns val stem -> wnid."""
    labels = {}
    k = 0
    for c in [*CLASSES, *EXTRA]:
        d = root / "train" / c
        d.mkdir(parents=True)
        for i in range(n_train):
            (d / f"{c}_{i}.JPEG").write_bytes(b"\xff\xd8jpeg")
        for _ in range(n_val - (1 if c == short else 0)):
            k += 1
            stem = f"ILSVRC2012_val_{k:08d}"
            (root / "val").mkdir(exist_ok=True)
            (root / "val" / f"{stem}.JPEG").write_bytes(b"\xff\xd8jpeg")
            labels[stem] = c
    return labels


def write_loc_csv(path: Path, labels: dict) -> None:
    rows = [f"{stem},{wnid} 10 20 30 40 {wnid} 1 2 3 4" for stem, wnid in labels.items()]
    path.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "orchestrator.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=120)


def test_builds_links_sorts_val_by_csv_and_counts(tmp_path: Path) -> None:
    src = tmp_path / "ilsvrc"
    labels = fake_imagenet(src, short=CLASSES[7])
    write_loc_csv(src / "LOC_val_solution.csv", labels)
    r = cli("data", "imagenet100", "--from", str(src), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "data" / "imagenet"
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(CLASSES)
    assert not (out / "train" / EXTRA[0]).exists()
    first = out / "train" / CLASSES[0]
    assert first.is_symlink() and first.resolve() == (src / "train" / CLASSES[0]).resolve()
    val = sorted((out / "val" / CLASSES[3]).iterdir())
    assert len(val) == 2 and all(v.is_symlink() for v in val)
    assert all(labels[v.stem] == CLASSES[3] for v in val)
    assert len(list((out / "val" / CLASSES[7]).iterdir())) == 1
    assert "100 classes, 300 train and 199 val images (symlinks, not copies)" in r.stdout
    assert f"validation labels from {src / 'LOC_val_solution.csv'}" in r.stdout
    assert "train: not 1,300 per class in 100 class(es)" in r.stdout
    assert "val: not 50 per class in 100 class(es)" in r.stdout and f"{CLASSES[7]} 1" in r.stdout
    # the worker's loader reads it, labels in class-list order
    from trainer.config import load_config
    from trainer.data.datasets import open_split

    cfg = load_config(ROOT / "configs" / "overnight_training_aggressive.yaml")
    spec = cfg.data.datasets[0].model_copy(update={"path": str(out)})
    ds = open_split(spec, "eval_test", None, cfg.data)
    assert len(ds) == 199 and ds.classes == CLASSES
    # a second build refuses to replace what is there, unless --force
    again = cli("data", "imagenet100", "--from", str(src), cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    assert cli("data", "imagenet100", "--from", str(src), "--force", cwd=tmp_path).returncode == 0


def test_devkit_labels_through_meta_mat(tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io", reason="meta.mat is read with scipy")
    src = tmp_path / "ilsvrc"
    labels = fake_imagenet(src, n_train=1, n_val=1)
    wnids = sorted({*CLASSES, *EXTRA})
    ids = {w: i + 1 for i, w in enumerate(wnids)}
    devkit = src / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    rec = np.array(
        [(ids[w], w, 0) for w in wnids],
        dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")],
    )
    scipy_io.savemat(str(devkit / "meta.mat"), {"synsets": rec})
    stems = sorted(labels)
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "\n".join(str(ids[labels[s]]) for s in stems) + "\n"
    )
    built = build(src, tmp_path / "out", CLASSES)
    assert built.labels_from.endswith("meta.mat") and sum(built.val.values()) == 100
    assert all(n == 1 for n in built.val.values())
    lines, usable = summary(built)
    assert usable and "val: not 50 per class in 100 class(es)" in "\n".join(lines)


def test_missing_classes_and_labels_are_named(tmp_path: Path) -> None:
    src = tmp_path / "ilsvrc"
    fake_imagenet(src, n_train=1, n_val=1)
    with pytest.raises(BuildError, match="no validation labels under"):
        build(src, tmp_path / "out", CLASSES)
    with pytest.raises(BuildError, match="1 of 101 classes not in"):
        build(src, tmp_path / "out2", [*CLASSES, "n00000000"])
