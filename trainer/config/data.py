"""The ``data`` config section: datasets, epoch size, batch, loading, augmentation.

Upstream's spellings fold into one canonical field each: ``data.dataset`` + ``data.data_path``
into ``data.datasets``; ``data.transforms`` into ``data.augmentation`` (strategy basic);
``data.use_multi_dataset`` must agree with the number of datasets. Mixup/cutmix accept only 0.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainer.config.base import Strict

DatasetName = Literal["cifar10", "stl10", "imagenet100", "imagefolder", "synthetic"]


class DatasetSpec(Strict):
    name: DatasetName
    path: str = Field("./data", description="Root folder (torchvision layout for cifar/stl).")
    weight: float = Field(1.0, gt=0, description="Share of each epoch drawn from this dataset.")
    download: bool = Field(False, description="Let torchvision download it (cifar10, stl10).")


class SyntheticConfig(Strict):
    num_train: int = Field(4096, ge=16, description="Unlabelled-for-training images.")
    num_eval_train: int = Field(1024, ge=16, description="Labelled images the probes fit on.")
    num_eval_test: int = Field(1024, ge=16, description="Labelled held-out images.")
    num_classes: int = Field(10, ge=2, le=64)
    seed: int = 0


class DeiT3Config(Strict):
    auto_augment: bool = False
    rand_aug_num_ops: int = 2
    rand_aug_magnitude: int = 9
    random_erasing_prob: float = Field(0.0, ge=0.0, le=1.0)
    mixup_alpha: float = Field(0.0, ge=0.0, le=0.0, description="Not meaningful for SSL: only 0.")
    cutmix_alpha: float = Field(0.0, ge=0.0, le=0.0, description="Not meaningful for SSL: only 0.")


class AugmentationConfig(Strict):
    strategy: Literal["basic", "deit3"] = "basic"
    crop_scale: tuple[float, float] = (0.8, 1.0)
    horizontal_flip: bool = True
    color_jitter: float = Field(0.0, ge=0.0, description="0 disables colour jitter.")
    deit3: DeiT3Config = Field(default_factory=DeiT3Config)
    photometric: Literal["auto", "host", "device"] = Field(
        "auto",
        description="Where colour jitter, float conversion and normalisation run: host (the "
        "loader workers), device (batched on the training device; crop and flip stay on the "
        "host, in uint8), auto (device on CUDA with strategy basic, else host). "
        "See trainer/data/photometric.py.",
    )

    @model_validator(mode="after")
    def _photometric_needs_basic(self) -> AugmentationConfig:
        if self.photometric == "device" and self.strategy != "basic":
            raise ValueError(
                "photometric: device needs strategy: basic (deit3's AutoAugment/RandAugment/"
                "RandomErasing run on the host); use photometric: host or auto"
            )
        return self


class TransformsConfig(Strict):
    """Upstream's conservative spelling; folded into data.augmentation (strategy basic)."""

    crop_scale: tuple[float, float] = (0.8, 1.0)
    horizontal_flip: bool = True
    color_jitter: float = 0.0
    photometric: Literal["auto", "host", "device"] = "auto"  # as data.augmentation.photometric


class DataConfig(Strict):
    use_multi_dataset: bool | None = Field(
        None, description="Upstream key; must match whether data.datasets has > 1 entry."
    )
    dataset: DatasetName | None = Field(None, description="Single-dataset spelling (upstream).")
    data_path: str | None = Field(None, description="Root for data.dataset (upstream).")
    datasets: list[DatasetSpec] = Field(default_factory=list)
    sampling_strategy: Literal["weighted"] = "weighted"
    epoch_size: int | None = Field(
        None, ge=1, description="Samples per epoch; default: the sum of the training splits."
    )
    image_size: int = Field(224, ge=16)
    batch_size: int = Field(32, ge=1, description="Micro-batch per forward/backward.")
    num_workers: int = Field(4, ge=0)
    pin_memory: bool = False
    imagenet_class_list: str | None = Field(
        None, description="imagenet100 class list; default configs/imagenet100_classes.txt."
    )
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    transforms: TransformsConfig | None = None
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)

    @model_validator(mode="after")
    def _resolve(self) -> DataConfig:
        if self.dataset is not None:
            if self.datasets:
                raise ValueError("set either data.dataset or data.datasets, not both")
            spec = DatasetSpec(name=self.dataset, path=self.data_path or "./data")
            object.__setattr__(self, "datasets", [spec])
            object.__setattr__(self, "dataset", None)
            object.__setattr__(self, "data_path", None)
        elif self.data_path is not None:
            raise ValueError("data.data_path needs data.dataset")
        if not self.datasets:
            raise ValueError("no dataset: set data.datasets (or data.dataset + data.data_path)")
        if self.use_multi_dataset is not None and self.use_multi_dataset != (
            len(self.datasets) > 1
        ):
            raise ValueError(
                f"data.use_multi_dataset={self.use_multi_dataset} but "
                f"{len(self.datasets)} dataset(s) are listed"
            )
        if self.transforms is not None:
            if "augmentation" in self.model_fields_set:
                raise ValueError("set either data.transforms or data.augmentation, not both")
            aug = AugmentationConfig(strategy="basic", **self.transforms.model_dump())
            object.__setattr__(self, "augmentation", aug)
            object.__setattr__(self, "transforms", None)
        return self
