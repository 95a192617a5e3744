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

This module is the worker's contract with the orchestrator (which imports only it and
``trainer.events`` from the worker): the root :class:`Config` with its cross-section checks,
loading (:func:`load_config`, :func:`load_raw`, :func:`write_resolved`), and every public name
of the family re-exported. The parts:

- ``trainer/config/base.py``: the strict base model, :class:`ConfigError`,
  :func:`format_validation_error`;
- ``trainer/config/model.py``: ``model``, ``masking``, ``loss``;
- ``trainer/config/data.py``: ``data``;
- ``trainer/config/run.py``: ``experiment``, ``training``, ``evaluation``, ``checkpoint``,
  ``logging``, ``faults``;
- ``trainer/config/dist.py``: ``distributed`` (processes, nodes, rendezvous, backend);
- ``trainer/config/overrides.py``: ``--set`` parsing and the spelling rules (SAME / REPLACED).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from trainer.config.base import ConfigError, Strict, format_validation_error
from trainer.config.data import (
    AugmentationConfig,
    DataConfig,
    DatasetName,
    DatasetSpec,
    DeiT3Config,
    SyntheticConfig,
    TransformsConfig,
)
from trainer.config.dist import DistributedConfig
from trainer.config.model import (
    ENCODER_PRESETS,
    EMAConfig,
    FPNConfig,
    LossConfig,
    MaskingConfig,
    ModelConfig,
    PredictorConfig,
    RopeConfig,
    VICRegCoeffs,
)
from trainer.config.overrides import (
    REPLACED,
    SAME,
    apply_overrides,
    fix_floats,
    parse_override,
)
from trainer.config.run import (
    CheckpointConfig,
    EvaluationConfig,
    ExperimentConfig,
    FaultsConfig,
    KNNConfig,
    LinearProbeConfig,
    LoggingConfig,
    TrainingConfig,
)

__all__ = [
    "ENCODER_PRESETS",
    "REPLACED",
    "SAME",
    "AugmentationConfig",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DatasetName",
    "DatasetSpec",
    "DeiT3Config",
    "DistributedConfig",
    "EMAConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "FPNConfig",
    "FaultsConfig",
    "KNNConfig",
    "LinearProbeConfig",
    "LoggingConfig",
    "LossConfig",
    "MaskingConfig",
    "ModelConfig",
    "PredictorConfig",
    "RopeConfig",
    "Strict",
    "SyntheticConfig",
    "TrainingConfig",
    "TransformsConfig",
    "VICRegCoeffs",
    "apply_overrides",
    "format_validation_error",
    "load_config",
    "load_raw",
    "parse_override",
    "write_resolved",
]


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
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
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
        """The global batch of a step (shared by the ranks when there are several)."""
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
def load_raw(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping from ``path``; errors (ConfigError) name the file and ``what`` it is."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} file not found")
    try:
        raw = yaml.safe_load(read_utf8(p, what))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return fix_floats(raw)


def read_utf8(p: Path, what: str) -> str:
    """The text of a user's YAML file as UTF-8 whatever the locale; ConfigError (naming the
    file and the fix) for a binary, non-UTF-8 or unreadable file."""
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the {what} file ({exc.strerror or exc})") from None
    if b"\x00" in raw:
        raise ConfigError(f"{p}: a binary file, not a YAML {what}: give the {what}'s YAML file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: the {what} file is not UTF-8 text (byte {exc.start}): save it as UTF-8"
        ) from None


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
