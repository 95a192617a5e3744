"""What the training loop and evaluation call to get data.

    train = build_train_data(cfg, device=device)       # TrainData
    loader = DataLoader(train.dataset, batch_size=cfg.data.batch_size,
                        sampler=train.sampler(epoch, start=samples_done), drop_last=True)
    loader = TrainLoader(cfg, train, masks, device)    # one per attempt: workers persist
    for batch in loader.epoch(epoch, start): ...       # what the worker iterates
    eval_train, eval_test = build_eval_data(cfg)       # labelled, eval transforms
    describe(cfg)  # {"cifar10": "data/cifar-10-batches-py (50000 train)", ...}

- Training concatenates the SSL split of every ``data.datasets`` entry (see
  ``trainer/data/datasets.py`` for which split that is) with the training transform of
  ``data.augmentation`` at ``data.image_size`` (``trainer/data/transforms.py``; its colour half on
  the device when ``data.augmentation.photometric`` says so: ``trainer/data/photometric.py``); items
  are ``(image, label)``, or ``((view1, view2), label)`` with two views (default:
  ``loss.use_contrastive``). Labels are not used for training (STL-10 unlabeled: -1).
- The epoch is ``data.epoch_size`` samples (default: the sum of the members), drawn by weight
  and ordered by ``trainer/data/sampling.py``: deterministic from (experiment.seed, epoch), and
  ``start`` resumes exactly mid-epoch.
- Evaluation uses ``data.datasets[evaluation.dataset_index]``'s labelled splits with the eval
  transform (resize ~1.14× + centre crop; synthetic: normalise only), each subsampled to at most
  ``evaluation.max_train_samples`` / ``max_test_samples`` items by a fixed-seed random subset
  (the same items in every run and every night, so numbers compare).
- A missing dataset raises :class:`DataMissingError` (dataset, path and the fix in the message).
Nothing here keeps global state; every dataset, transform and sampler pickles for workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset

from trainer.config import Config, DatasetSpec
from trainer.data.datasets import DataMissingError, location, open_split
from trainer.data.photometric import HostGeometry, photometric_on_device
from trainer.data.sampling import EpochSampler
from trainer.data.transforms import TwoViews, eval_transform, train_transform
from trainer.model.positional import PositionalSampler, SeededCollate, SeededDataset

__all__ = [
    "DataMissingError",
    "TrainData",
    "TrainLoader",
    "build_eval_data",
    "build_train_data",
    "describe",
    "describe_dataset",
    "named_datasets",
    "train_loader",
]

EVAL_SUBSET_SEED = 20240601  # fixed: eval subsets must not move with experiment.seed


@dataclass
class TrainData:
    """The concatenated SSL training set and its epoch sampler.

    ``sizes`` is in concatenation order (keys are dataset names; a repeated name gets ``#i``
    appended, ``i`` its index in ``data.datasets``). ``weights`` (same keys; missing = 1.0) and
    ``seed`` parameterise :meth:`sampler`. ``photometric``: where the colour half of the
    augmentation runs for these items, ``host`` or ``device`` (trainer.data.photometric).
    """

    dataset: Dataset
    sizes: dict[str, int]
    epoch_size: int
    weights: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    photometric: str = "host"

    def sampler(self, epoch: int, start: int = 0) -> Sampler[int]:
        """The epoch's order: deterministic from (seed, epoch); dataset i contributes
        round(epoch_size·w_i/Σw) samples (without replacement while it has enough), shuffled
        together; ``start`` skips the first ``start`` samples (exact resume mid-epoch)."""
        names = list(self.sizes)
        return EpochSampler(
            sizes=[self.sizes[n] for n in names],
            weights=[self.weights.get(n, 1.0) for n in names],
            epoch_size=self.epoch_size,
            seed=self.seed,
            epoch=epoch,
            start=start,
        )


def _keys(specs: list[DatasetSpec]) -> list[str]:
    names = [s.name for s in specs]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def build_train_data(
    cfg: Config, two_views: bool | None = None, device: torch.device | None = None
) -> TrainData:
    """Open every dataset's SSL split with the training transform (see the module docstring).
    ``device``: the training device; where colour augmentation runs there
    (``data.augmentation.photometric``), the items carry uint8 images and their colour
    parameters instead (trainer.data.photometric), finished by the prefetcher. None: all on the
    host.
    """
    if two_views is None:
        two_views = cfg.loss.use_contrastive
    aug, size = cfg.data.augmentation, cfg.data.image_size
    on_device = device is not None and photometric_on_device(cfg, device)
    tf = HostGeometry(aug, size) if on_device else train_transform(aug, size)
    transform = TwoViews(tf) if two_views else tf
    specs = cfg.data.datasets
    members = [open_split(spec, "ssl", transform, cfg.data) for spec in specs]
    keys = _keys(specs)
    sizes = {k: len(m) for k, m in zip(keys, members, strict=True)}  # type: ignore[arg-type]
    for key, n in sizes.items():
        if n == 0:
            spec = specs[keys.index(key)]
            raise DataMissingError(
                spec.name, spec.path, f"{key}: {location(spec)} holds no training images"
            )
    dataset: Dataset = members[0] if len(members) == 1 else ConcatDataset(members)
    return TrainData(
        dataset=dataset,
        sizes=sizes,
        epoch_size=cfg.data.epoch_size or sum(sizes.values()),
        weights={k: s.weight for k, s in zip(keys, specs, strict=True)},
        seed=cfg.experiment.seed,
        photometric="device" if on_device else "host",
    )


class _EpochPositions(Sampler[tuple[int, int]]):
    """The sampler a persistent DataLoader keeps: it yields from whichever epoch's
    :class:`PositionalSampler` was set last (the main process draws indices, so setting it
    before ``iter(loader)`` is enough; workers only see (index, seed) pairs)."""

    def __init__(self) -> None:
        self.current: PositionalSampler | None = None

    def __iter__(self) -> Any:
        assert self.current is not None, "TrainLoader.epoch() sets the positions first"
        return iter(self.current)

    def __len__(self) -> int:
        return len(self.current) if self.current is not None else 0


class TrainLoader:
    """The training DataLoader of one attempt: ``loader.epoch(e, start)`` is what the worker
    iterates for epoch ``e`` from sample ``start`` on — whole optimizer steps only
    (``(epoch_size - start) // global batch`` of them; the global batch is micro × accumulation
    × ``world``), every item seeded by its position and every batch masked by ``masks`` (a
    MaskCollator) from its first item's seed, so resume, the worker count and the world size
    change nothing (trainer/model/positional.py). With several ranks ``rank`` gets its chunks of the
    positions in batches of ``micro`` (its share of ``data.batch_size``) and ``accum`` of them
    make its part of a step (default: the config's, one process).

    Loader workers start once and persist across epochs (``persistent_workers``): only the
    positions change from one epoch to the next, so restarting them (and re-opening datasets,
    re-importing torch in each) every epoch bought nothing.

    Host → device: batches are pinned when ``data.pin_memory`` is set or the device is CUDA
    (pinned memory makes the loop's ``non_blocking`` copies really asynchronous); pinning is
    pointless on CPU and unsupported on MPS. On CUDA each worker keeps 4 batches in flight
    (elsewhere PyTorch's default 2, so host memory stays as it was).
    """

    def __init__(
        self,
        cfg: Config,
        train: TrainData,
        masks: Any,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        micro: int | None = None,
        accum: int | None = None,
    ) -> None:
        d = cfg.data
        self.cfg, self.train, self.rank, self.world = cfg, train, rank, world
        self.micro = micro or d.batch_size
        self.eff = self.micro * (accum or cfg.training.accumulation_steps) * world
        self.positions = _EpochPositions()
        cuda = device.type == "cuda"
        self.loader = DataLoader(
            SeededDataset(train.dataset),
            batch_size=self.micro,
            sampler=self.positions,
            drop_last=True,
            num_workers=d.num_workers,
            pin_memory=d.pin_memory or cuda,
            collate_fn=SeededCollate(masks),
            generator=torch.Generator().manual_seed(cfg.experiment.seed),
            persistent_workers=d.num_workers > 0,
            prefetch_factor=(4 if cuda else 2) if d.num_workers else None,
        )

    def epoch(self, epoch: int, start: int) -> DataLoader:
        steps = (self.train.epoch_size - start) // self.eff
        self.positions.current = PositionalSampler(
            self.train.sampler(epoch, start),
            self.cfg.experiment.seed,
            epoch,
            start,
            steps * self.eff,
            self.rank,
            self.world,
            self.micro,
        )
        return self.loader


def train_loader(
    cfg: Config,
    train: TrainData,
    masks: Any,
    epoch: int,
    start: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    micro: int | None = None,
    accum: int | None = None,
) -> DataLoader:
    """One epoch's loader from a fresh :class:`TrainLoader` (for one-off use: bench, tests)."""
    return TrainLoader(cfg, train, masks, device, rank, world, micro, accum).epoch(epoch, start)


def _subsample(ds: Dataset, limit: int, salt: int) -> Dataset:
    n = len(ds)  # type: ignore[arg-type]
    if n <= limit:
        return ds
    rng = np.random.default_rng([EVAL_SUBSET_SEED, salt])
    return Subset(ds, np.sort(rng.choice(n, size=limit, replace=False)).tolist())


def build_eval_data(cfg: Config) -> tuple[Dataset, Dataset]:
    """Labelled (train, test) splits of ``data.datasets[evaluation.dataset_index]``."""
    spec = cfg.data.datasets[cfg.evaluation.dataset_index]
    tf = eval_transform(cfg.data.image_size, resize=spec.name != "synthetic")
    train = open_split(spec, "eval_train", tf, cfg.data)
    test = open_split(spec, "eval_test", tf, cfg.data)
    return (
        _subsample(train, cfg.evaluation.max_train_samples, 1),
        _subsample(test, cfg.evaluation.max_test_samples, 2),
    )


def describe(cfg: Config) -> dict[str, str]:
    """One line per training dataset for pre-flight, e.g. ``{"cifar10":
    "data/cifar-10-batches-py (50000 train)"}``. Opens each dataset (without transforms), so a
    missing one raises :class:`DataMissingError` exactly as training would."""
    return {key: describe_dataset(spec, cfg) for key, spec in named_datasets(cfg)}


def named_datasets(cfg: Config) -> list[tuple[str, DatasetSpec]]:
    """``data.datasets`` with their keys (a repeated name gets ``#i``, as in ``TrainData``)."""
    specs = cfg.data.datasets
    return list(zip(_keys(specs), specs, strict=True))


def describe_dataset(spec: DatasetSpec, cfg: Config, fetch_ok: bool = True) -> str:
    """One dataset's line for :func:`describe`; raises :class:`DataMissingError` when missing
    (a ``download: true`` one is downloaded first unless ``fetch_ok`` is False)."""
    n = len(open_split(spec, "ssl", None, cfg.data, fetch_ok))  # type: ignore[arg-type]
    where = location(spec)
    if where is None:
        s = cfg.data.synthetic
        return (
            f"synthetic (generated in memory, seed {s.seed}, {s.num_classes} classes) ({n} train)"
        )
    return f"{where} ({n} train)"
