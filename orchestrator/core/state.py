"""The state file ``STATE_DIR/state.json``: the plan's source of truth.

Written atomically (temp file, fsync, rename, fsync dir) on every change, schema-versioned,
read by the daemon, the night runner, ``status`` (screen and ``--json``) and ``report``.
A file with a newer ``schema_version`` or one that does not parse is a clear error
(:class:`StateError`) and is moved aside to ``state.json.corrupt-<time>``; nothing is guessed.

Keys (documented contract; ``hjepa-night status --json`` prints this object):

- ``schema_version`` — int, currently 1.
- ``plan`` — ``{name, file, kind, started_at, report_time}`` or null (``hjepa-night run``).
- ``current_night`` — index into ``nights`` of the night running now, or null.
- ``next_start`` — ISO time of the next scheduled night start, or null.
- ``daemon`` — ``{pid, create_time, started_at, log}`` of the owning daemon, or null.
- ``nights`` — list of nights, each:
  ``name``, ``index``, ``config`` (path), ``runbook`` (path), ``status``
  (``pending|running|stopped|succeeded|partial|failed|skipped``; ``stopped`` is a night a stop
  request ended before its end — resumable like ``running``), ``reason`` (why it ended so),
  ``window_start``/``deadline`` (ISO), ``started_at``/``ended_at`` (ISO), ``overrides`` (the
  overrides in force now: base plan overrides + fallbacks), ``attempts`` (list, below),
  ``fallbacks`` (list with ``trigger``, ``action``, ``at``, ``evidence``, ``effect``),
  ``decisions`` (every policy decision, same shape plus ``kind``), ``forecasts`` (list with
  ``at``, ``epoch``, ``projected_finish``, ``deadline``), ``forecast_error_s`` (first forecast
  minus actual finish, seconds; ``forecast_errors_s`` has one per forecast), ``baseline_metrics``
  (epoch-0 eval of the random encoder), ``final_metrics`` (``epoch``, ``knn`` like the eval
  event, ``linear_probe``, ``feature_std``, ``effective_rank``), ``best_checkpoint`` (path),
  ``success`` (``level``: must|should|stretch|none, ``checks``: list of {name, level, passed,
  value, threshold, evidence}), ``device``, ``epochs_planned``, ``epochs_done``, ``awake``
  (how sleep was held off during the night, or why not), ``clock_gaps`` (list with ``at``,
  ``seconds``, ``attempt``: the machine slept anyway — the wall clock ran ahead of the
  monotonic one).
- each attempt: ``index``, ``run_dir``, ``overrides`` (dict key.path → value, all in force for
  this attempt), ``resume_from`` (checkpoint path or null), ``started_at``, ``ended_at``,
  ``pid``, ``pid_create_time``, ``exit_code``, ``exit_kind`` (``finished|stopped|oom|nonfinite|
  feature|data|crash|config|resume|hang|memory|killed|disk`` or null while running), ``message``,
  ``last_epoch``, ``last_step``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainer.events import atomic_write_text

SCHEMA_VERSION = 1
STATE_FILE = "state.json"

NightStatus = Literal["pending", "running", "stopped", "succeeded", "partial", "failed", "skipped"]
ExitKind = Literal[
    "finished",
    "stopped",
    "oom",
    "nonfinite",
    "feature",
    "data",
    "crash",
    "config",
    "resume",
    "hang",
    "memory",
    "killed",
    "disk",
]


class StateError(RuntimeError):
    """The state file cannot be used (corrupt, or from a newer version)."""


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metrics(_M):
    epoch: int | None = None
    knn: dict[str, float] = Field(default_factory=dict)
    linear_probe: float | None = None
    feature_std: float | None = None
    effective_rank: float | None = None
    val_loss: float | None = None
    feature_variance: float | None = None
    contrastive_accuracy: float | None = None


class Fallback(_M):
    trigger: str
    action: str
    at: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    effect: str = ""
    attempt: int | None = None


class ClockGap(_M):
    """The machine slept (or its clock jumped) during a night: the wall clock ran ``seconds``
    ahead of the monotonic clock; ``at`` is when it was noticed (wall clock, after the gap)."""

    at: str
    seconds: float
    attempt: int | None = None


class DecisionRecord(_M):
    """A decision as the state file keeps it (the policy's answer is ``policy.Decision``)."""

    kind: str
    trigger: str
    action: str
    at: str
    evidence: dict[str, Any] = Field(default_factory=dict)


class ForecastRecord(_M):
    """A projected finish recorded at an epoch end (shown as ``views.snapshot.Forecast``)."""

    at: str
    epoch: int
    projected_finish: str
    deadline: str | None = None


class Attempt(_M):
    index: int
    run_dir: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    resume_from: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    pid: int | None = None
    pid_create_time: float | None = None
    exit_code: int | None = None
    exit_kind: ExitKind | None = None
    message: str | None = None
    last_epoch: int | None = None
    last_step: int | None = None


class SuccessCheck(_M):
    name: str
    level: Literal["must", "should", "stretch"]
    passed: bool | None
    value: Any = None
    threshold: Any = None
    evidence: dict[str, Any] = Field(default_factory=dict)


class Success(_M):
    level: Literal["must", "should", "stretch", "none"] = "none"
    checks: list[SuccessCheck] = Field(default_factory=list)


class Night(_M):
    name: str
    index: int
    config: str
    runbook: str
    status: NightStatus = "pending"
    reason: str | None = None
    window_start: str | None = None
    deadline: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    attempts: list[Attempt] = Field(default_factory=list)
    fallbacks: list[Fallback] = Field(default_factory=list)
    decisions: list[DecisionRecord] = Field(default_factory=list)
    forecasts: list[ForecastRecord] = Field(default_factory=list)
    forecast_error_s: float | None = None
    forecast_errors_s: list[float] = Field(default_factory=list)
    baseline_metrics: Metrics | None = None
    final_metrics: Metrics | None = None
    best_checkpoint: str | None = None
    success: Success | None = None
    device: str | None = None
    epochs_planned: int | None = None
    epochs_done: int | None = None
    clock_gaps: list[ClockGap] = Field(default_factory=list)
    awake: str | None = None  # how sleep was held off during the night, or why it was not

    # Every change of ``status`` goes through these two methods (``TRANSITIONS``).
    def start(self) -> None:
        """pending|running|stopped → running (a resumed night keeps its first ``started_at``)."""
        if self.status == "stopped":
            self.reason = None
        self._move("running")
        self.started_at = self.started_at or now_iso()

    def pause(self, reason: str) -> None:
        """running → stopped: a stop request ended the night before its end; it is resumed
        (``start``) exactly like a running one."""
        self._move("stopped")
        self.reason = reason

    def end(self, status: NightStatus, reason: str, keep_ended_at: bool = False) -> None:
        """→ an ending (succeeded, partial, failed, skipped) with the reason a person reads."""
        self._move(status)
        self.reason = reason
        self.ended_at = (self.ended_at if keep_ended_at else None) or now_iso()

    def _move(self, to: NightStatus) -> None:
        if to not in TRANSITIONS[self.status]:
            raise StateError(f"night {self.name}: {self.status} -> {to} is not a transition")
        self.status = to


# A night not ended yet: ``start`` (a plan) or the same ``run`` picks it up again.
RESUMABLE = ("pending", "running", "stopped")

# The night's life: the only status changes there are (Night.start / Night.end).
TRANSITIONS: dict[str, tuple[str, ...]] = {
    # FROM -> TO
    "pending": ("running", "skipped", "partial", "failed"),
    "running": ("running", "stopped", "succeeded", "partial", "failed", "skipped"),
    "stopped": ("running", "succeeded", "partial", "failed", "skipped"),
    "succeeded": (),
    "partial": (),
    "failed": (),
    "skipped": (),
}
# A night that ended: a status with no way out (succeeded, partial, failed, skipped).
ENDED: tuple[str, ...] = tuple(status for status, to in TRANSITIONS.items() if not to)


class PlanRecord(_M):
    name: str
    file: str | None = None
    kind: str = "sequential"
    started_at: str | None = None
    report_time: str | None = None


class DaemonRecord(_M):
    pid: int
    create_time: float | None = None
    started_at: str | None = None
    log: str | None = None


class State(_M):
    schema_version: int = SCHEMA_VERSION
    plan: PlanRecord | None = None
    current_night: int | None = None
    next_start: str | None = None
    daemon: DaemonRecord | None = None
    nights: list[Night] = Field(default_factory=list)
    updated_at: str | None = None


def now_iso(ts: float | None = None) -> str:
    """Local wall-clock time with offset, second precision (for display and schedules)."""
    return (
        datetime.fromtimestamp(time.time() if ts is None else ts)
        .astimezone()
        .isoformat(timespec="seconds")
    )


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


class StateStore:
    """Load/save ``state.json`` in a state dir. ``save`` is atomic; ``load`` is strict."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def load(self, set_aside: bool = True) -> State:
        """The state; a corrupt file raises :class:`StateError` and, with ``set_aside`` (only
        the daemon or ``run`` that owns the state dir), is moved to ``state.json.corrupt-<t>``.
        Readers (``status``, ``report``, ``stop``) pass ``set_aside=False``: they never change
        files."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return State()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            aside = self._set_aside(set_aside)
            raise StateError(
                f"{self.path}: state file is corrupt ({exc.msg} at line {exc.lineno}); "
                f"{aside}. Inspect it, or start the plan afresh."
            ) from None
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if not isinstance(version, int):
            aside = self._set_aside(set_aside)
            raise StateError(f"{self.path}: no schema_version; {aside}")
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: written by a newer hjepa-night (schema {version}, this one "
                f"reads {SCHEMA_VERSION}); upgrade, or move the file away to start afresh"
            )
        try:
            return State.model_validate(raw)
        except ValidationError as exc:
            aside = self._set_aside(set_aside)
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise StateError(
                f"{self.path}: state file does not match the schema ({loc}: {first['msg']}); "
                f"{aside}"
            ) from None

    def save(self, state: State) -> None:
        state.updated_at = now_iso()
        atomic_write_text(self.path, state.model_dump_json(indent=2))

    def _set_aside(self, really: bool) -> str:
        """Move the unusable file aside (owners only); the sentence saying what happened."""
        if not really:
            return "left in place (only `hjepa-night start` or `run` moves it aside)"
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        self.path.replace(aside)
        return f"kept aside as {aside}"


def read_snapshot(state_dir: str | Path) -> State | None:
    """Best-effort read for viewers (status screen, report): never raises, never moves files."""
    path = Path(state_dir) / STATE_FILE
    for _ in range(3):
        try:
            state = State.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            time.sleep(0.05)  # replaced mid-read: try again
            continue
        # a newer schema is not guessed at (``StateStore.load`` says so in words)
        return state if state.schema_version <= SCHEMA_VERSION else None
    return None
