"""The config sections of how a run goes: ``experiment``, ``training`` (optimizer, schedule,
precision, accumulation), ``evaluation``, ``checkpoint``, ``logging`` and ``faults`` (the test
aid; its key names are a contract).

Knobs upstream declared but we do not implement (Weights & Biases, attention maps)
accept only their "off" value.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from trainer.config.base import Strict
from trainer.config.features import FeatureName


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
        "has no bf16), fp16 on MPS (torch >= 2.8), bf16 on a CPU with bf16 instructions "
        "(AVX512-BF16/AMX) and fp32 on other CPUs; false means fp32.",
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
        False,
        description="torch.compile (inductor) the step's forward + backward; CUDA and "
        "CPU (needs a C++ compiler), refused on MPS.",
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
    """Logistic regression on frozen features, fitted to convergence
    (trainer/eval/linear_probe.py)."""

    enabled: bool = True
    l2_grid: list[Annotated[float, Field(gt=0.0)]] = Field(
        default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
        min_length=1,
        description="L2 strengths tried; the best on the held-out part of the training split wins.",
    )
    val_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Part of the training features held out to choose L2."
    )
    max_iter: int = Field(500, ge=1, description="L-BFGS iterations per fit, at most.")


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
    use_tensorboard: bool = Field(
        False,
        description="Also write TensorBoard curves from the events (the night's tensorboard/"
        " folder; needs the tensorboard extra; trainer/runtime/tensorboard_log.py).",
    )
    log_frequency: int = Field(50, ge=1, description="Emit a `step` event every N steps.")
    log_images: bool = Field(False, description="Save a mask-overlay PNG at each evaluation.")
    log_attention: Literal[False] = Field(False, description="Not supported: only false.")
    log_gradients: bool = Field(False, description="Per-module grad norms in step events.")
    log_dataset_distribution: bool = Field(
        True, description="Per-dataset sample counts in the started event."
    )
    heartbeat_s: float = Field(5.0, gt=0, le=10.0, description="Heartbeat period.")
    health_every_steps: int = Field(
        25,
        ge=0,
        description="Emit a `health` event (batch RankMe, feature variance, loss trend) every "
        "N optimizer steps; 0: never (no collapse/divergence detection).",
    )


class FaultsConfig(Strict):
    """Fault injection for tests and the demo. These key names are a contract."""

    nonfinite_at_step: int | None = Field(None, ge=1, description="Loss → NaN at this step, once.")
    oom_above_micro_batch: int | None = Field(
        None, ge=1, description="torch.OutOfMemoryError on steps whose micro-batch is larger."
    )
    raise_in_feature: FeatureName | None = Field(
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
    collapse_at_step: int | None = Field(
        None,
        ge=1,
        description="Collapse the representation at this step, once: the final LayerNorm "
        "gains of both encoders → 0, so every image embeds alike (rank → 0).",
    )
    diverge_at_step: int | None = Field(
        None,
        ge=1,
        description="A finite blow-up at this step, once: large noise added to the context "
        "encoder's and the predictor's weights, so the loss jumps and stays up.",
    )
    step_delay_s: float = Field(0.0, ge=0.0, description="Sleep this long every step.")
    oom_rank: int | None = Field(
        None, ge=0, description="With oom_at_step: raise it on this rank only (default: all)."
    )
    hang_rank: int | None = Field(
        None, ge=0, description="With hang_at_step: hang on this rank only (default: all)."
    )
    sigkill_rank: int | None = Field(
        None, ge=0, description="With sigkill_at_step: this rank SIGKILLs itself, once."
    )
    sigkill_at_step: int | None = Field(
        None, ge=1, description="The step at which sigkill_rank SIGKILLs itself, once."
    )
    check_gradients: bool = Field(
        False,
        description="Before every optimizer step, fail (a crash naming them) if any trainable "
        "parameter has no gradient: every parameter must learn in every step.",
    )

    @model_validator(mode="after")
    def _pairs(self) -> FaultsConfig:
        if (self.sigkill_rank is None) != (self.sigkill_at_step is None):
            raise ValueError("faults.sigkill_rank and faults.sigkill_at_step go together")
        if self.oom_rank is not None and self.oom_at_step is None:
            raise ValueError("faults.oom_rank needs faults.oom_at_step")
        if self.hang_rank is not None and self.hang_at_step is None:
            raise ValueError("faults.hang_rank needs faults.hang_at_step")
        return self
