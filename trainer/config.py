"""The worker's configuration: one strict schema, parsed once at the edge.

    cfg = load_config("configs/demo_conservative.yaml", overrides=["training.epochs=3"])

Every section forbids unknown keys, so a typo is an error that names the file and the key
(upstream silently ignored a third of its overnight keys). Key names and nesting follow the
upstream H-JEPA overnight configs so those translate one to one; where upstream offered two
spellings of one knob (``model.use_fpn`` and ``model.fpn.use_fpn``; ``data.dataset`` and
``data.datasets``; ``data.transforms`` and ``data.augmentation``) both are accepted, folded into
one canonical field, and contradictory values are an error. Knobs upstream declared but we do
not implement (RoPE, Weights & Biases, attention maps, mixup/cutmix) accept only their "off"
value; "on" is a clear error, never a silent no-op.

``--set key.path=value`` overrides are parsed as YAML scalars/lists and validated like the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DatasetName = Literal["cifar10", "stl10", "imagenet100", "imagefolder", "synthetic"]

ENCODER_PRESETS: dict[str, dict[str, int]] = {
    "vit_tiny_patch16_224": {"embed_dim": 192, "depth": 12, "num_heads": 3, "patch_size": 16},
    "vit_small_patch16_224": {"embed_dim": 384, "depth": 12, "num_heads": 6, "patch_size": 16},
    "vit_base_patch16_224": {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16},
}


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# experiment
class ExperimentConfig(Strict):
    name: str = Field("hjepa", description="Run name, shown in events and reports.")
    seed: int = Field(42, description="Seeds torch, numpy and python RNGs and the samplers.")
    output_dir: str | None = Field(
        None, description="Informational (upstream key); the run dir comes from --run-dir."
    )
    description: str = ""
    save_frequency: int = Field(1, ge=1, description="Checkpoint every N epochs (and at the end).")
    eval_frequency: int | None = Field(
        None, ge=1, description="Alias of evaluation.eval_frequency; must agree if both are set."
    )


# --------------------------------------------------------------------------------------------
# model
class FPNConfig(Strict):
    use_fpn: bool | None = Field(None, description="Alias of model.use_fpn (upstream spelling).")
    feature_dim: int | None = Field(None, description="FPN width; default: encoder embed_dim.")
    fusion_method: Literal["add", "concat"] = "add"


class RopeConfig(Strict):
    use_rope: Literal[False] = Field(False, description="RoPE is not implemented: only false.")
    theta: float = 10000.0


class PredictorConfig(Strict):
    depth: int = Field(6, ge=1)
    num_heads: int = Field(6, ge=1)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    embed_dim: int | None = Field(None, description="Predictor width; default: encoder width.")


class EMAConfig(Strict):
    momentum: float = Field(0.996, ge=0.0, le=1.0, description="Target-encoder EMA at start.")
    momentum_end: float = Field(1.0, ge=0.0, le=1.0, description="EMA at the last step.")
    momentum_warmup_epochs: int = Field(
        0, ge=0, description="Hold `momentum` this many epochs, then ramp linearly to the end."
    )


class ModelConfig(Strict):
    encoder_type: str = Field(
        "vit_small_patch16_224",
        description="A preset (vit_tiny/small/base_patch16_224) or 'custom' (set the sizes).",
    )
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 16
    mlp_ratio: float = 4.0
    num_hierarchies: int = Field(3, ge=1, le=4, description="Target levels (1 = plain I-JEPA).")
    use_flash_attention: bool = Field(True, description="SDPA attention instead of explicit.")
    use_layerscale: bool = False
    layerscale_init: float = 1e-5
    use_gradient_checkpointing: bool = False
    use_fpn: bool = False
    fpn: FPNConfig = Field(default_factory=FPNConfig)
    rope: RopeConfig = Field(default_factory=RopeConfig)
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    ema: EMAConfig = Field(default_factory=EMAConfig)

    @model_validator(mode="after")
    def _resolve(self) -> ModelConfig:
        preset = ENCODER_PRESETS.get(self.encoder_type)
        if preset is None and self.encoder_type != "custom":
            raise ValueError(
                f"encoder_type {self.encoder_type!r} is unknown; use one of "
                f"{sorted(ENCODER_PRESETS)} or 'custom'"
            )
        if preset is not None:
            for key, value in preset.items():
                if key in self.model_fields_set and getattr(self, key) != value:
                    raise ValueError(
                        f"{key}={getattr(self, key)} contradicts encoder_type "
                        f"{self.encoder_type} ({key}={value}); use encoder_type: custom"
                    )
                object.__setattr__(self, key, value)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads")
        if self.fpn.use_fpn is not None:
            if "use_fpn" in self.model_fields_set and self.fpn.use_fpn != self.use_fpn:
                raise ValueError("model.use_fpn and model.fpn.use_fpn disagree")
            object.__setattr__(self, "use_fpn", self.fpn.use_fpn)
            object.__setattr__(self.fpn, "use_fpn", None)
        return self


# --------------------------------------------------------------------------------------------
# data
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


class TransformsConfig(Strict):
    """Upstream's conservative spelling; folded into data.augmentation (strategy basic)."""

    crop_scale: tuple[float, float] = (0.8, 1.0)
    horizontal_flip: bool = True
    color_jitter: float = 0.0


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


# --------------------------------------------------------------------------------------------
# masking
class MaskingConfig(Strict):
    num_masks: int = Field(4, ge=1, description="Target blocks per image.")
    mask_scale: tuple[float, float] = (0.15, 0.2)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    num_context_masks: Literal[1] = 1
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_keep: int = Field(4, ge=1, description="Fewest context tokens kept.")
    context_tokens: int | None = Field(
        None, ge=1, description="Context patches per image, the same for every batch (static "
        "shapes); unset: the 5% quantile of the context size drawn from the scales."
    )
    target_tokens: int | None = Field(
        None, ge=1, description="Patches per target block, the same for every batch; unset: "
        "round(mean(mask_scale) * patches)."
    )


# --------------------------------------------------------------------------------------------
# loss
class VICRegCoeffs(Strict):
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0


class LossConfig(Strict):
    type: Literal["smoothl1", "mse", "cjepa", "combined"] = Field(
        "smoothl1",
        description="smoothl1/mse: the JEPA distance; cjepa: JEPA (jepa_loss_type) + "
        "contrastive while use_contrastive is true (false: the plain JEPA loss of "
        "jepa_loss_type); combined: JEPA + VICReg. VICReg follows use_vicreg in every case.",
    )
    jepa_loss_type: Literal["smoothl1", "mse"] = "smoothl1"
    jepa_weight: float = 1.0
    hierarchy_weights: list[float] = Field(default_factory=lambda: [1.0, 0.7, 0.5])
    normalize_embeddings: bool = False
    use_vicreg: bool = True
    vicreg_weight: float = Field(0.01, ge=0.0, description="Weight of the VICReg term.")
    vicreg: VICRegCoeffs = Field(default_factory=VICRegCoeffs)
    use_contrastive: bool = Field(
        False,
        description="Add the NT-Xent term (two augmented views). Under type cjepa, false means "
        "the plain JEPA loss of jepa_loss_type (+ VICReg per use_vicreg): the contrastive "
        "fallback switches only this key.",
    )
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 0.1
    use_cosine_similarity: bool = True
    contrastive_on_context: bool = False

    @property
    def distance(self) -> str:
        return self.jepa_loss_type if self.type in ("cjepa", "combined") else self.type


# --------------------------------------------------------------------------------------------
# training
class TrainingConfig(Strict):
    epochs: int = Field(50, ge=1)
    warmup_epochs: float = Field(5, ge=0)
    optimizer: Literal["adamw"] = "adamw"
    lr: float = Field(1.5e-4, gt=0)
    weight_decay: float = 0.04
    betas: tuple[float, float] = (0.9, 0.95)
    lr_schedule: Literal["cosine"] = "cosine"
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0, description="Final LR = lr × this.")
    warmup_lr_ratio: float = Field(0.001, ge=0.0, le=1.0, description="First LR = lr × this.")
    clip_grad: float | None = Field(3.0, description="Max grad norm; null disables clipping.")
    use_amp: bool = Field(
        True,
        description="Allow mixed precision. With precision auto: bf16 on CUDA (fp16 where the GPU "
        "has no bf16), fp16 on MPS (torch >= 2.8), fp32 on CPU; false means fp32.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Autocast precision: auto (the device's choice, see use_amp) or forced. fp16 "
        "adds a GradScaler (also on CPU); bf16/fp16 with use_amp: false is an error.",
    )
    max_consecutive_overflows: int = Field(
        25,
        ge=1,
        description="Steps in a row whose gradients are non-finite while the loss is finite "
        "(GradScaler overflow) that are skipped before the worker stops with nonfinite.",
    )
    accumulation_steps: int = Field(1, ge=1)
    compile: bool = Field(
        False, description="torch.compile (inductor) the step's forward + backward; CUDA and "
        "CPU (needs a C++ compiler), refused on MPS."
    )

    @model_validator(mode="after")
    def _amp(self) -> TrainingConfig:
        if not self.use_amp and self.precision in ("bf16", "fp16"):
            raise ValueError(
                f"training.use_amp: false contradicts training.precision: {self.precision} "
                "(set use_amp: true, or precision: fp32 / auto)"
            )
        return self


# --------------------------------------------------------------------------------------------
# evaluation
class KNNConfig(Strict):
    enabled: bool = True
    k_values: list[int] = Field(default_factory=lambda: [1, 5, 20])
    frequency: int | None = Field(None, description="Alias of eval_frequency; must agree.")
    temperature: float = 0.07


class LinearProbeConfig(Strict):
    enabled: bool = True
    epochs: int = Field(50, ge=1)
    lr: float = 1e-2
    weight_decay: float = 1e-4


class EvaluationConfig(Strict):
    eval_frequency: int = Field(10, ge=1, description="Evaluate every N epochs (and at end).")
    eval_at_start: bool = Field(True, description="Evaluate the random encoder at epoch 0.")
    dataset_index: int = Field(0, ge=0, description="Which data.datasets entry to evaluate on.")
    max_train_samples: int = Field(10000, ge=10, description="Labelled samples probes fit on.")
    max_test_samples: int = Field(5000, ge=10, description="Held-out samples scored.")
    rank_samples: int = Field(1000, ge=10, description="Samples for effective rank.")
    batch_size: int = Field(128, ge=1)
    knn: KNNConfig = Field(default_factory=KNNConfig)
    linear_probe: LinearProbeConfig = Field(default_factory=LinearProbeConfig)


# --------------------------------------------------------------------------------------------
# checkpoint / logging / faults
class CheckpointConfig(Strict):
    save_best: bool = Field(True, description="Keep best.pt by `metric`.")
    metric: Literal["val_loss", "knn", "linear_probe"] = "val_loss"
    mode: Literal["min", "max"] = "min"
    keep_last_k: int = Field(3, ge=2)
    every_n_steps: int | None = Field(None, ge=1, description="Also checkpoint mid-epoch.")
    every_minutes: float | None = Field(
        None,
        gt=0,
        description="Also checkpoint at the first step boundary once this many minutes "
        "(monotonic clock) passed since the last save, so a rollback loses at most that.",
    )


class LoggingConfig(Strict):
    use_wandb: Literal[False] = Field(False, description="Not supported: only false.")
    use_tensorboard: Literal[False] = Field(
        False, description="Not supported (events.jsonl and the report replace it): only false."
    )
    log_frequency: int = Field(50, ge=1, description="Emit a `step` event every N steps.")
    log_images: bool = Field(False, description="Save a mask-overlay PNG at each evaluation.")
    log_attention: Literal[False] = Field(False, description="Not supported: only false.")
    log_gradients: bool = Field(False, description="Per-module grad norms in step events.")
    log_dataset_distribution: bool = Field(
        True, description="Per-dataset sample counts in the started event."
    )
    heartbeat_s: float = Field(5.0, gt=0, le=10.0, description="Heartbeat period.")


class FaultsConfig(Strict):
    """Fault injection for tests and the demo. These key names are a contract."""

    nonfinite_at_step: int | None = Field(None, ge=1, description="Loss → NaN at this step, once.")
    oom_above_micro_batch: int | None = Field(
        None, ge=1, description="torch.OutOfMemoryError on steps whose micro-batch is larger."
    )
    raise_in_feature: str | None = Field(
        None, description="Raise inside this feature (fpn, contrastive, ...) while enabled."
    )
    raise_in_feature_after_step: int | None = Field(
        None,
        ge=1,
        description="Arm raise_in_feature only from optimizer step N on (so a checkpoint "
        "exists first); unset: armed from the start.",
    )
    oom_at_step: int | None = Field(
        None, ge=1, description="torch.OutOfMemoryError at this step, once."
    )
    grad_overflow_at_step: int | None = Field(
        None,
        ge=1,
        description="Make the gradients non-finite (loss stays finite) at this step, once: "
        "the GradScaler-overflow path (skipped, counted steps).",
    )
    grad_overflow_steps: int = Field(
        1, ge=1, description="With grad_overflow_at_step: this many consecutive overflows."
    )
    hang_at_step: int | None = Field(None, ge=1, description="Stop progressing here, once.")
    step_delay_s: float = Field(0.0, ge=0.0, description="Sleep this long every step.")


class Config(Strict):
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    faults: FaultsConfig = Field(default_factory=FaultsConfig)

    @model_validator(mode="after")
    def _cross(self) -> Config:
        ev = self.evaluation
        for alias, where in (
            (self.experiment.eval_frequency, "experiment.eval_frequency"),
            (ev.knn.frequency, "evaluation.knn.frequency"),
        ):
            if alias is not None and alias != ev.eval_frequency:
                raise ValueError(
                    f"{where}={alias} disagrees with evaluation.eval_frequency={ev.eval_frequency}"
                )
        if len(self.loss.hierarchy_weights) != self.model.num_hierarchies:
            raise ValueError(
                f"loss.hierarchy_weights has {len(self.loss.hierarchy_weights)} entries but "
                f"model.num_hierarchies is {self.model.num_hierarchies}"
            )
        if self.data.image_size % self.model.patch_size:
            raise ValueError("data.image_size must be a multiple of model.patch_size")
        if ev.dataset_index >= len(self.data.datasets):
            raise ValueError("evaluation.dataset_index is past the end of data.datasets")
        return self

    # -- derived ---------------------------------------------------------------------------
    @property
    def effective_batch(self) -> int:
        return self.data.batch_size * self.training.accumulation_steps

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """Hash of everything that shapes the experiment (faults excluded)."""
        payload = self.model_dump(mode="json", exclude={"faults"})
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.lr=1e-4' → (['training', 'lr'], 0.0001); values are YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads "1e-4" as a string
    return path, value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in "e.") and text.strip().lower() not in ("nan", "inf")


# One knob, several spellings (upstream's and ours). A --set of one spelling speaks for the knob:
# the file's other spellings follow it (SAME: set to the same value) or give way to it
# (REPLACED: removed), so "--set evaluation.eval_frequency=20" on a file that also says
# experiment.eval_frequency: 10, or "--set data.datasets=[...]" on a file that says
# data.dataset: imagenet100, is the change a person (or a fallback rung) meant, not a conflict.
SAME: tuple[tuple[str, ...], ...] = (
    ("evaluation.eval_frequency", "experiment.eval_frequency", "evaluation.knn.frequency"),
    ("model.use_fpn", "model.fpn.use_fpn"),
)
REPLACED: dict[str, tuple[str, ...]] = {
    "data.datasets": ("data.dataset", "data.data_path", "data.use_multi_dataset"),
    "data.dataset": ("data.datasets", "data.use_multi_dataset"),
}


def _lookup(raw: dict[str, Any], dotted: str) -> tuple[dict[str, Any] | None, str]:
    *parents, last = dotted.split(".")
    node: Any = raw
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), last


def _follow_spellings(raw: dict[str, Any], key: str, value: Any, set_keys: set[str]) -> None:
    for group in SAME:
        if key in group:
            for other in group:
                node, last = _lookup(raw, other)
                if other not in set_keys and node is not None and last in node:
                    node[last] = value
    for other in REPLACED.get(key, ()):
        node, last = _lookup(raw, other)
        if other not in set_keys and node is not None:
            node.pop(last, None)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    set_keys = {item.partition("=")[0].strip() for item in overrides}
    for item in overrides:
        path, value = parse_override(item)
        _follow_spellings(raw, ".".join(path), value, set_keys)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def _fix_floats(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _fix_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_floats(v) for v in node]
    if isinstance(node, str) and _looks_like_float(node):
        return float(node)
    return node


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not in the schema; check the spelling)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_raw(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping from ``path``; errors (ConfigError) name the file and ``what`` it is."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return _fix_floats(raw)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, apply --set overrides, validate. Errors name the file (and --set) and the key."""
    raw = apply_overrides(load_raw(path), list(overrides or []))
    source = str(path) + (f" (with --set {' '.join(overrides)})" if overrides else "")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def write_resolved(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_yaml_dict(), sort_keys=False))
