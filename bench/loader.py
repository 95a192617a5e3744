"""python bench/loader.py [--config F] [--data DIR] [--device D] [--batch 128] [--batches 12]

More options: [--workers 0 4 ...] [--where host device] [--set k=v ...].

How many images per second the worker's data pipeline delivers on its own, no training step:
the real ``TrainLoader`` (transforms, seeded masks, persistent workers, pinning on CUDA) and
the real prefetcher (side-stream copy on CUDA, and the colour half of the augmentation when it
runs on the device, ``trainer/data/photometric.py``), on CIFAR-10 from ``--data`` (its parent of
``cifar-10-batches-py/``), else fake CIFAR-10 written by bench/fake_cifar.py (random uint8 in
the real format: the same decode and augmentation cost). One JSON line per (``--where``,
``--workers``) pair: ``img_per_s`` and ``worker_ms_per_img`` (host milliseconds one image costs
one worker: workers × seconds per image; with 0 workers the main process's). Compare
``img_per_s`` with ``bench/throughput.py``'s step: a pipeline slower than the step caps it.

The first two batches (workers starting) are not timed; the device is synchronised at the end
of the timed batches.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fake_cifar import write_fake_cifar  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.data.masks import MaskCollator  # noqa: E402
from trainer.data.pipeline import TrainLoader, build_train_data  # noqa: E402
from trainer.data.prefetch import DevicePrefetch  # noqa: E402
from trainer.runtime.device import select_device, synchronize  # noqa: E402

CONFIG = ROOT / "configs" / "overnight_training_conservative.yaml"
_UNTIMED = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Images per second of the data pipeline alone.")
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--data", default=None, help="folder holding cifar-10-batches-py/")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 4])
    ap.add_argument("--where", nargs="+", choices=("host", "device"), default=["host", "device"])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    return ap.parse_args(argv)


def measure(a: argparse.Namespace, root: Path, where: str, workers: int) -> dict:
    cfg = load_config(
        a.config,
        [
            f"device={a.device}",
            f"data.datasets=[{{name: cifar10, path: {root}}}]",
            "data.use_multi_dataset=false",
            f"data.batch_size={a.batch}",
            "training.accumulation_steps=1",
            f"data.num_workers={workers}",
            f"data.epoch_size={a.batch * (a.batches + _UNTIMED)}",
            f"data.transforms.photometric={where}",
            *a.overrides,
        ],
    )
    device = select_device(cfg.device)
    train = build_train_data(cfg, device=device)
    masks = MaskCollator(
        cfg.masking, cfg.data.image_size, cfg.model.patch_size, seed=cfg.experiment.seed
    )
    loader = TrainLoader(cfg, train, masks, device)
    it = DevicePrefetch(iter(loader.epoch(1, 0)), device)
    for _ in range(_UNTIMED):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        n += len(batch)
    synchronize(device)
    seconds = time.perf_counter() - t0
    return {
        "where": train.photometric,
        "device": str(device),
        "workers": workers,
        "image_size": cfg.data.image_size,
        "color_jitter": cfg.data.augmentation.color_jitter,
        "images": n,
        "img_per_s": round(n / seconds, 1),
        "worker_ms_per_img": round(1000.0 * max(workers, 1) * seconds / n, 3),
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.data:
        root = Path(a.data)
    else:
        fake = Path(tempfile.gettempdir()) / "hjepa-fake-data-loader"
        root = write_fake_cifar(fake, train=a.batch * (a.batches + _UNTIMED), test=16).parent
    for where in a.where:
        for workers in a.workers:
            print(json.dumps(measure(a, root, where, workers)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
