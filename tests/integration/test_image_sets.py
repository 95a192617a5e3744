"""The real-image set written by ``python -m trainer.data.image_sets`` loads through the real
loaders."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets as tvd

from tests.workerutil import ROOT, env
from trainer.config import Config
from trainer.data.image_sets import write_image_folder
from trainer.data.pipeline import build_eval_data, build_train_data

pytest.importorskip("sklearn")


pytestmark = pytest.mark.slow  # real processes


def make_cfg(root, size=32):
    return Config.model_validate(
        {
            "data": {"datasets": [{"name": "imagefolder", "path": str(root)}], "image_size": size},
            "model": {"encoder_type": "custom", "patch_size": 4},
            "evaluation": {"max_train_samples": 4096, "max_test_samples": 4096},
        }
    )


def test_digits_cli_writes_an_image_folder_that_torchvision_reads(tmp_path):
    out = tmp_path / "digits"
    r = subprocess.run(
        [sys.executable, "-m", "trainer.data.image_sets", "digits", str(out)],
        capture_output=True,
        text=True,
        env=env(),
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "1198 train + 599 val images, 10 classes" in r.stdout
    train = tvd.ImageFolder(str(out / "train"))
    val = tvd.ImageFolder(str(out / "val"))
    assert train.classes == val.classes == [str(c) for c in range(10)]
    assert (len(train), len(val)) == (1198, 599)
    per_class = Counter(val.targets)  # a third of each class, split per class
    assert all(55 <= n <= 62 for n in per_class.values()), per_class
    img, label = train[0]
    assert img.size == (8, 8) and label == 0
    with Image.open(train.samples[0][0]) as raw:
        assert raw.mode == "L" and raw.getextrema()[1] > 200  # ink reaches near white
    # The same command again rewrites the same files; a foreign folder is refused.
    r = subprocess.run(
        [sys.executable, "-m", "trainer.data.image_sets", "digits", str(out)],
        capture_output=True,
        text=True,
        env=env(),
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    (tmp_path / "other" / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        write_image_folder(tmp_path / "other")


def test_digits_train_and_eval_through_the_worker_loaders(tmp_path):
    write_image_folder(tmp_path / "digits")
    cfg = make_cfg(tmp_path / "digits")
    train = build_train_data(cfg)
    assert train.sizes == {"imagefolder": 1198}
    images, labels = next(iter(DataLoader(train.dataset, batch_size=16, shuffle=True)))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert labels.min() >= 0 and labels.max() <= 9
    ev_train, ev_test = build_eval_data(cfg)
    assert (len(ev_train), len(ev_test)) == (1198, 599)
    x, y = ev_test[0]
    assert x.shape == (3, 32, 32) and 0 <= y <= 9
    assert x.std() > 0.3  # upscaled digit, not a blank frame
