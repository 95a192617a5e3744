"""What the policy sees and what it answers: plain frozen dataclasses, no behaviour.

Times are unix seconds (``now``, ``deadline``, event ``ts``) or durations in seconds; the policy
never reads a clock. Memory is in bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol


class DecisionKind(str, Enum):
    CONTINUE = "continue"
    SET_EPOCHS = "set_epochs"  # live: control file, schedules rescale, no restart
    RESTART = "restart"  # (stop the worker if alive and) launch again with overrides
    KILL = "kill"  # kill a hung worker that is not launched again (a separate final eval)
    STOP_FOR_DEADLINE = "stop_for_deadline"  # live: control stop + final_eval
    END_NIGHT = "end_night"


@dataclass(frozen=True)
class CheckpointRef:
    path: str
    epoch: int
    step: int
    ts: float = 0.0


@dataclass(frozen=True)
class ConfigFacts:
    """The config values in force for the current attempt (after all overrides)."""

    micro_batch: int
    accum_steps: int
    lr: float
    epochs: int
    eval_frequency: int
    features: dict[str, bool] = field(default_factory=dict)  # runbook feature name → enabled
    datasets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Observation:
    """One attempt, seen by the supervisor at ``now``.

    Live fields describe a running worker (``running``); ``exit_kind`` is set once it ended
    (classified by :func:`orchestrator.policy.classify.classify_exit`).
    """

    running: bool
    started_at: float  # when the attempt was launched
    last_heartbeat_at: float | None = None  # ts of the newest heartbeat/step/any event
    # seconds since the newest sign of progress, measured by the supervisor on the monotonic
    # clock (None: unknown, the policy falls back to now − last_heartbeat_at)
    silent_s: float | None = None
    recent_step_s: float | None = None  # the run's own recent seconds per optimizer step
    phase: str = "startup"
    epoch: int = 0  # epochs completed in this lineage
    step: int = 0
    total_epochs: int = 0  # in force now (after live cuts)
    epoch_end_ts: float | None = None  # ts of the newest epoch_end
    epoch_seconds: tuple[float, ...] = ()  # this attempt, oldest first
    eval_seconds: tuple[float, ...] = ()  # evals after epoch 0, this attempt
    checkpoint_seconds: tuple[float, ...] = ()
    stop_reason: str | None = None  # stop requested for: deadline, slow, memory, hang, daemon
    # memory, newest sample
    tree_mem: int | None = None  # memory the worker tree owns (PSS/USS; RSS where no other)
    tree_measure: str = "rss"  # which of those tree_mem is
    gpu_used: int | None = None
    gpu_total: int | None = None  # NVML's total of the GPU gpu_used was read on
    gpu_whole_card: bool = False  # gpu_used is the whole card's (NVML matched no tree pid)
    device_mem: int | None = None  # largest reading the worker reported
    device_total: int | None = None  # the device's own memory, as the worker reports it
    swap_growth: int | None = None  # swap used now minus at launch
    sys_available: int | None = None  # system available memory (lowest recent, for a kill)
    sys_total: int | None = None  # the host's RAM
    # ending
    exit_kind: str | None = None
    exit_code: int | None = None
    message: str = ""
    fatal_feature: str | None = None
    fatal_step: int | None = None  # optimizer steps completed when it failed (bad = this + 1)
    finished_reason: str | None = None  # "completed" | "stopped" from the finished event
    # this attempt's health points (trainer/train/health.py), oldest first: collapse and divergence
    health: tuple[Any, ...] = ()

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None


@dataclass(frozen=True)
class NightHistory:
    """The night so far, as the night runner reconstructs it from the state file."""

    attempts: int  # launched so far, including the current one
    attempts_without_progress: int  # trailing failed attempts that added no new best step
    config: ConfigFacts
    base_effective_batch: int  # micro × accumulation of the night's original config
    overrides: dict[str, Any] = field(default_factory=dict)  # in force now (fallbacks applied)
    rungs_used: dict[str, int] = field(default_factory=dict)  # ladder name → rungs taken
    disabled_features: tuple[str, ...] = ()
    checkpoints: tuple[CheckpointRef, ...] = ()  # usable ones of the current lineage
    memory_warned: bool = False  # a memory trip with the OOM ladder exhausted was recorded
    health_warned: bool = False  # a collapse/divergence with the health ladder exhausted, too


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    trigger: str  # e.g. "oom", "memory", "hang", "slow", "deadline", "nonfinite", "completed"
    action: str  # one sentence a person reads in the morning
    evidence: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None  # SET_EPOCHS
    resume_from: str | None = None  # RESTART: checkpoint path (None: fresh start)
    # new config keys to set (RESTART, and SET_EPOCHS's training.epochs): the night runner writes
    # them into the night's overrides in state.json BEFORE the decision takes effect
    overrides: dict[str, Any] = field(default_factory=dict)
    ladder: str | None = None  # RESTART: which ladder advanced (counted in rungs_used)
    effect: str = ""  # what changed for the experiment (effective batch, LR scaling, ...)
    fallback: bool = False  # record as a fallback (a change to the night), not just a decision
    reason: str = ""  # END_NIGHT: why

    @property
    def is_continue(self) -> bool:
        return self.kind is DecisionKind.CONTINUE


CONTINUE = Decision(DecisionKind.CONTINUE, trigger="", action="")


class MetricsFacts(Protocol):
    """What the success checks read of an evaluation (the state's ``Metrics`` is one)."""

    knn: dict[str, float]
    linear_probe: float | None
    feature_std: float | None
    effective_rank: float | None
    val_loss: float | None


@dataclass(frozen=True)
class NightEvidence:
    """What the success checks read beyond the final evaluation, gathered by the night runner.

    ``features_planned``: optional feature → on, as the night was planned (its config with the
    plan's base overrides); ``features_final``: the same in force at the end (fallbacks
    applied); ``disabled_by``: feature → the fallback action that switched it off.
    ``previous`` / ``previous_name``: the final evaluation of the night this one depends on.
    ``speedup_vs_no_flash``: preflight's measured step-time ratio (None: not measured).
    ``final_loss``: mean training loss of the last epoch. ``night_hours``: window start → the
    worker's finish (None: it did not finish).
    """

    features_planned: dict[str, bool] = field(default_factory=dict)
    features_final: dict[str, bool] = field(default_factory=dict)
    disabled_by: dict[str, str] = field(default_factory=dict)
    previous: MetricsFacts | None = None
    previous_name: str | None = None
    speedup_vs_no_flash: float | None = None
    speedup_source: str = ""
    final_loss: float | None = None
    night_hours: float | None = None


@dataclass(frozen=True)
class CheckResult:
    name: str
    level: Literal["must", "should", "stretch"]
    passed: bool | None
    value: Any = None
    threshold: Any = None
    evidence: dict[str, Any] = field(default_factory=dict)  # what the check read, for the report


@dataclass(frozen=True)
class Verdict:
    """The success level reached (``none`` when a must check fails) and every check."""

    level: Literal["must", "should", "stretch", "none"]
    checks: tuple[CheckResult, ...] = ()
