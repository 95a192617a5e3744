"""Runbooks: the fallback ladders, thresholds, limits and success criteria of a night, as data.

    rb = load_runbook("runbooks/conservative.yaml")
    rb.memory.ceiling_gb, rb.memory.device_ceiling(total), rb.ladders.oom[0].overrides

A runbook is YAML validated by :class:`Runbook` (unknown keys are errors naming the file and the
key). Every rung's ``set:`` keys are checked against the worker's config schema
(``trainer.config.Config``) at load time, so a misspelt key fails before the night, not at 3 am.
The policy (``orchestrator.policy``) executes the ladders; the status screen reads ``display``
and ``memory``; the report and the night runner judge ``success``.

Ladder semantics (what the policy does with each list):

- ``oom``: rungs in order. A rung that sets ``data.batch_size`` but not
  ``training.accumulation_steps`` gets the accumulation that keeps the night's effective batch
  (``effective / batch`` when it divides, else the nearest) and, where the product differs, the
  LR is scaled linearly; the fallback's effect text says so.
- ``nonfinite``: rungs in order; ``training.lr`` in a rung is the LR at the night's original
  effective batch (rescaled if an OOM rung changed the effective batch).
- ``slow``: ``epochs`` are the preferred totals for a live cut; ``then`` rungs need a restart
  and are used only when even the smallest possible epoch count does not fit.
- ``features``: the order in which optional features are disabled (the failing one first).
- ``dataset_fallback``: one rung applied when the dataset is missing.
- ``health``: rungs in order after a collapse or a divergence (``health`` limits); the night
  rolls back to the newest checkpoint before the drop. A ``training.lr`` rung is rescaled like
  the non-finite ladder's and skipped unless it lowers the LR; a ``loss.vicreg.*`` rung is
  skipped when the loss has no VICReg term.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.core.datafiles import resolve_data, shipped_root
from trainer.config import Config, ConfigError, format_validation_error, load_raw
from trainer.config.features import FEATURE_KEYS as FEATURE_KEYS  # the names, once
from trainer.config.features import FeatureName

MetricName = Literal[
    "finished_in_window",
    "no_unrecovered_nonfinite",
    "features_intact",
    "linear_probe",
    "knn_1",
    "knn_5",
    "knn_20",
    "feature_std",
    "feature_variance",
    "effective_rank",
    "contrastive_accuracy",
    "final_loss",
    "gain_over_previous_night",
    "speedup_vs_no_flash",
    "night_hours",
]
# Checks that pass or fail without a threshold (op and value are not allowed).
BOOLEAN_METRICS = ("finished_in_window", "no_unrecovered_nonfinite", "features_intact")
RUNBOOK_DIR = shipped_root() / "runbooks"  # shipped; ./runbooks wins (default_runbook_for)


class RunbookError(ValueError):
    """A runbook that cannot be used; the message names the file and the key."""


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Limits(_M):
    max_attempts: int = Field(8, ge=1, description="Worker launches per night, all kinds.")
    max_attempts_without_progress: int = Field(
        3, ge=1, description="Consecutive failed attempts that added no checkpoint past the best."
    )
    max_consecutive_overflows: int = Field(
        25,
        ge=1,
        description="Gradient-overflow steps in a row the worker may skip (fp16 GradScaler "
        "backs off on purpose) before it calls the loss non-finite; passed to every attempt "
        "as training.max_consecutive_overflows.",
    )


class ProgressTimeouts(_M):
    """How long the worker may go without a sign of progress (a step, an epoch's end, an
    evaluation, a checkpoint, a heartbeat) in each phase before the policy calls it hung
    (``orchestrator.policy.decide.progress_timeout``), and the SIGTERM grace of a stop. The
    runbook key is ``progress``; ``heartbeat``, its former name, is still read."""

    startup_timeout_s: float = Field(900, gt=0, description="Until the first train heartbeat.")
    step_timeout_s: float = Field(
        180,
        gt=0,
        description="Silence allowed in phases train and data (a data stall is a "
        "stalled step), at least; see step_timeout_factor.",
    )
    step_timeout_factor: float = Field(
        5.0,
        ge=1.0,
        description="The step timeout adapts to the run's own pace: silence allowed in train/data "
        "is max(step_timeout_s, factor × the recent seconds per step). A machine whose steps "
        "are slow is not hung; its epochs get cut instead.",
    )
    slow_phase_timeout_s: float = Field(
        1200, gt=0, description="Phases loader (first batch of an epoch), eval, checkpoint."
    )
    term_grace_s: float = Field(30, gt=0, description="SIGTERM → SIGKILL delay.")


class MemoryLimits(_M):
    """Two ceilings: the host's, in GB, for what the worker tree owns in RAM (PSS/USS, else RSS);
    the device's, as a fraction of the device's own total memory (what the worker reports: CUDA
    ``total_memory``; MPS ``recommendedMaxWorkingSetSize``, Metal's recommended working-set
    limit for a process on unified memory; NVML's total of the card when the worker has not
    reported yet). A CPU run has no device ceiling: its device memory is the host's, under
    ``ceiling_gb``.

    ``ceiling_gb`` keeps its host meaning; it was also compared with GPU memory once (a 28 GB
    ceiling for a 32 GB Mac capped an 80 GB GPU at 28 GB) and no longer is."""

    good_gb: float = Field(20, description="Host (worker tree) memory shown green up to here.")
    warning_gb: float = Field(25, description="Host memory shown red from here.")
    ceiling_gb: float = Field(
        28,
        gt=0,
        description="HOST ceiling: worker tree memory (PSS/USS, else RSS) above → OOM. Never "
        "compared with device memory (see device_fraction).",
    )
    swap_growth_gb: float = Field(2.0, gt=0, description="Swap growth since launch above → OOM.")
    device_fraction: float = Field(
        0.92,
        gt=0,
        le=1,
        description="DEVICE ceiling as a fraction of the device's own total memory: device "
        "memory (the worker's reserved/driver reading, or NVML's) above → OOM; preflight probes "
        "micro-batches up to it.",
    )
    near_fraction: float = Field(
        0.9,
        gt=0,
        le=1,
        description="A SIGKILL nobody here sent counts as an out-of-memory kill only when memory "
        "in the samples before it reached this fraction of a ceiling (host or device), system "
        "available memory fell under (1 - this) of the RAM, or the kernel counted an OOM kill; "
        "otherwise the attempt restarts from its checkpoint unchanged.",
    )

    def device_ceiling(self, total: int | None) -> float | None:
        """The device ceiling in bytes for a device of ``total`` bytes (None: no device total,
        no device ceiling)."""
        return device_ceiling(self.device_fraction, total) if total else None


def device_ceiling(fraction: float, total: int) -> float:
    """The device ceiling in bytes: ``fraction`` of a device of ``total`` bytes."""
    return fraction * total


class HealthLimits(_M):
    """When the worker's ``health`` points (every ``logging.health_every_steps`` steps) make a
    fault (``orchestrator/policy/health.py``): collapse or divergence, fixed by
    ``ladders.health``."""

    enabled: bool = Field(True, description="Judge the health points at all.")
    warmup_points: int = Field(
        2, ge=0, description="The first points of each attempt set no best (it settles first)."
    )
    rank_floor: float = Field(
        1.0,
        ge=0,
        description="Batch effective rank below this → collapse (at most min(B, D)).",
    )
    rank_drop: float = Field(
        0.6, gt=0, lt=1, description="Rank below (1 − this) × its best → collapse."
    )
    variance_drop: float = Field(
        0.9, gt=0, lt=1, description="Feature variance below (1 − this) × its best → collapse."
    )
    divergence_factor: float = Field(
        2.0, gt=1, description="Loss moving average above this × its lowest → divergence."
    )


class Rung(_M):
    overrides: dict[str, Any] = Field(alias="set", description="Config key.path → value.")
    note: str = ""


class SlowLadder(_M):
    epochs: list[int] = Field(default_factory=list)
    then: list[Rung] = Field(default_factory=list)


class Ladders(_M):
    oom: list[Rung] = Field(default_factory=list)
    nonfinite: list[Rung] = Field(default_factory=list)
    slow: SlowLadder = Field(default_factory=SlowLadder)
    features: list[FeatureName] = Field(default_factory=list)
    dataset_fallback: Rung | None = None
    health: list[Rung] = Field(
        default_factory=list,
        description="Collapse or divergence: roll back before the drop and take the next rung "
        "(lower LR, then a higher EMA momentum, then a larger variance weight).",
    )


class Check(_M):
    """One success criterion (``orchestrator.policy.success`` scores it).

    Metrics: ``finished_in_window``, ``no_unrecovered_nonfinite``; ``features_intact`` (the
    listed ``features`` — or, without a list, every optional feature the night started with —
    still on at its end: no fallback switched them off); the final evaluation's
    ``linear_probe``, ``knn_K``, ``feature_std``, ``feature_variance`` (mean per-dimension
    variance), ``effective_rank`` (RankMe, of 384 dims on the real recipes),
    ``contrastive_accuracy`` (top-1 of the positive pair in the evaluation batch); ``final_loss``
    (mean training loss of the last epoch); ``gain_over_previous_night`` (linear probe minus the
    previous night's, a fraction: 0.05 = +5 points); ``speedup_vs_no_flash`` (preflight's step
    time with flash attention off over on, at the planned batch); ``night_hours`` (window start
    to the worker's finish)."""

    metric: MetricName
    op: Literal[">", ">=", "<", "<="] | None = None
    value: float | None = None
    relative: bool = Field(False, description="Compare the gain over the epoch-0 eval.")
    features: list[FeatureName] | None = Field(
        None, description="features_intact: the features that must stay on (default: all on)."
    )

    @model_validator(mode="after")
    def _needs_threshold(self) -> Check:
        boolean = self.metric in BOOLEAN_METRICS
        if not boolean and (self.op is None or self.value is None):
            raise ValueError(f"check {self.metric} needs op and value")
        if boolean and (self.op is not None or self.value is not None):
            raise ValueError(f"check {self.metric} takes no op or value")
        if self.features is not None and self.metric != "features_intact":
            raise ValueError(f"check {self.metric}: features applies to features_intact only")
        return self

    @property
    def name(self) -> str:
        if self.metric == "features_intact":
            return (
                f"features_intact [{', '.join(self.features)}]"
                if self.features
                else ("features_intact [all enabled]")
            )
        if self.op is None:
            return self.metric
        gain = " gain" if self.relative else ""
        return f"{self.metric}{gain} {self.op} {self.value:g}"


class SuccessCriteria(_M):
    must: list[Check] = Field(default_factory=list)
    should: list[Check] = Field(default_factory=list)
    stretch: list[Check] = Field(default_factory=list)


class Band(_M):
    good: float
    warning: float


class Display(_M):
    epoch_minutes: Band = Field(default_factory=lambda: Band(good=12, warning=15))
    grad_norm: Band = Field(default_factory=lambda: Band(good=5, warning=50))
    feature_variance: Band = Field(
        default_factory=lambda: Band(good=0.1, warning=0.05),
        description="Mean per-dimension feature variance of the evaluation (lower is worse).",
    )


class Expectation(_M):
    """What the recipe says a normal night looks like; the report compares each with what the
    night measured (``orchestrator/views/report/expected.py``). Not a success criterion."""

    measure: Literal[
        "epoch_minutes", "memory_peak_gb", "final_loss", "knn_1", "knn_5", "knn_20", "linear_probe"
    ]
    low: float | None = Field(None, description="Lowest normal value (None: no lower bound).")
    high: float | None = Field(None, description="Highest normal value (None: no upper bound).")
    source: str = Field("", description="Where the range comes from.")

    @model_validator(mode="after")
    def _a_range(self) -> Expectation:
        if self.low is None and self.high is None:
            raise ValueError(f"expectation {self.measure} needs low or high")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"expectation {self.measure}: low > high")
        return self


class Runbook(_M):
    name: str
    window_hours: float = Field(8.0, gt=0)
    final_eval_minutes: float = Field(20, ge=0, description="Reserved before the deadline.")
    limits: Limits = Field(default_factory=Limits)
    progress: ProgressTimeouts = Field(
        default_factory=ProgressTimeouts,
        validation_alias=AliasChoices("progress", "heartbeat"),
        description="Progress timeouts per phase (key formerly spelt heartbeat, still read).",
    )
    sampling_interval_s: float = Field(5, gt=0)
    memory: MemoryLimits = Field(default_factory=MemoryLimits)
    health: HealthLimits = Field(default_factory=HealthLimits)
    ladders: Ladders = Field(default_factory=Ladders)
    success: SuccessCriteria = Field(default_factory=SuccessCriteria)
    display: Display = Field(default_factory=Display)
    expectations: list[Expectation] = Field(default_factory=list)

    @property
    def final_eval_s(self) -> float:
        return self.final_eval_minutes * 60.0


def config_key_exists(path: str) -> bool:
    """Whether ``a.b.c`` names a field of the worker config schema (sections walked by type)."""
    model: Any = Config
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        if i < len(parts) - 1:
            model = annotation if isinstance(annotation, type) else None
            if model is None:
                return False
    return True


def _check_rung_keys(rb: Runbook) -> list[str]:
    bad = []
    named: list[tuple[str, Rung]] = [(f"ladders.oom[{i}]", r) for i, r in enumerate(rb.ladders.oom)]
    named += [(f"ladders.nonfinite[{i}]", r) for i, r in enumerate(rb.ladders.nonfinite)]
    named += [(f"ladders.slow.then[{i}]", r) for i, r in enumerate(rb.ladders.slow.then)]
    named += [(f"ladders.health[{i}]", r) for i, r in enumerate(rb.ladders.health)]
    if rb.ladders.dataset_fallback is not None:
        named.append(("ladders.dataset_fallback", rb.ladders.dataset_fallback))
    for where, rung in named:
        bad += [f"{where}.set.{k}" for k in rung.overrides if not config_key_exists(k)]
    return bad


def parse_runbook(raw: Any, source: str) -> Runbook:
    if not isinstance(raw, dict):
        raise RunbookError(f"{source}: top level must be a mapping")
    try:
        rb = Runbook.model_validate(raw)
    except ValidationError as exc:
        text = format_validation_error(exc, source).replace("configuration", "runbook")
        raise RunbookError(text) from None
    bad = _check_rung_keys(rb)
    if bad:
        raise RunbookError(
            f"{source}: invalid runbook\n"
            + "\n".join(f"  {b}: not a key of the worker config" for b in bad)
        )
    return rb


def load_runbook(path: str | Path) -> Runbook:
    """Load and validate a runbook file; errors name the file and the key."""
    try:
        raw = load_raw(path, what="runbook")
    except ConfigError as exc:
        raise RunbookError(str(exc)) from None
    return parse_runbook(raw, str(path))


def default_runbook_for(config_path: str | Path) -> Path:
    """The runbook file for a config nobody named one for: the policy's table
    (:func:`orchestrator.policy.runbooks.runbook_name_for`), from ``./runbooks`` when the
    working directory has that file, else the shipped one."""
    from orchestrator.policy.runbooks import runbook_name_for  # the policy imports this module

    name = f"{runbook_name_for(config_path)}.yaml"
    return resolve_data(Path("runbooks") / name)  # ./runbooks first, then RUNBOOK_DIR
