"""Plans: which nights run, when, on which config — and the night-2 decision.

    plan = load_plan(resolve_plan_path("sequential"))
    state = build_state(plan, now=local_now(), start_now=False)

A plan file (``configs/plans/*.yaml``, strict schema, errors name the file and the key)::

    name: sequential
    report_at: "06:30"          # morning report time after each night (null: only at night end)
    late_start_min: 2h          # a first night started late runs if this much window is left
    nights:
      - name: conservative      # run dir STATE_DIR/runs/n1-conservative/
        config: configs/overnight_training_conservative.yaml   # relative to the project root
        runbook: runbooks/conservative.yaml
        start: "22:00"          # local HH:MM, or after_previous (starts when the previous ends)
        window: 8h              # optional; default: the runbook's window_hours
        overrides: {}           # key.path -> value, validated against the config schema
      - name: aggressive
        ...
        requires: previous_succeeded    # else `otherwise`:
        otherwise: repeat_previous      # previous night's config + its final overrides | skip

Timing rules (pure functions of ``now``): the first night takes the window that contains
``now`` if at least ``late_start_min`` of it is left, else the next one; ``--now`` (or
``start: after_previous``) starts it now. A later fixed-time night takes the first HH:MM at or
after the previous deadline; an ``after_previous`` night gets its window when the previous ends.
:func:`reconcile` turns nights whose window passed while nothing ran into ``skipped`` (never
started) or ``partial``/``failed`` (started; partial when an evaluated checkpoint exists).
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.core.datafiles import PROJECT_ROOT as PROJECT_ROOT
from orchestrator.core.datafiles import plan_dirs, resolve_data, shipped_root
from orchestrator.core.durations import parse_duration, parse_window
from orchestrator.core.runbook import RunbookError, load_runbook
from orchestrator.core.state import (
    ENDED,
    DecisionRecord,
    Night,
    PlanRecord,
    State,
    now_iso,
    parse_iso,
)
from orchestrator.night.history import override_args, record_results, results_of
from orchestrator.policy.recovery import learned_overrides, next_night, passed_window_status
from orchestrator.schedule.notify import NotifySpec
from trainer.config import ConfigError, format_validation_error, load_config, read_utf8

PLANS_DIR = shipped_root() / "configs" / "plans"
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class PlanError(ValueError):
    """A plan problem; the message names the plan file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NightSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Short name (run dir).")
    config: str = Field(description="Worker config file; relative paths: the project root.")
    runbook: str = Field(description="Runbook file (fallback ladders, success criteria).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="key.path -> value.")
    start: str = Field("22:00", description="Local HH:MM, or after_previous.")
    window: str | None = Field(
        None,
        description="Length of the night's window (8h, 90m, ...); default: the runbook's "
        "window_hours (8 h conservative, 9 h aggressive).",
    )
    requires: Literal["none", "previous_succeeded"] = "none"
    otherwise: Literal["repeat_previous", "skip"] = Field(
        "repeat_previous", description="When `requires` is not met."
    )

    @field_validator("start")
    @classmethod
    def _start(cls, v: str) -> str:
        if v != "after_previous" and not _HHMM.match(v):
            raise ValueError(f"{v!r}: use local HH:MM (e.g. '22:00') or after_previous")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None:
            parse_window(v, minimum=0.0)
        return v

    @property
    def window_s(self) -> float:
        """The plan's window, else the runbook's ``window_hours``."""
        if self.window is not None:
            return parse_duration(self.window)
        return load_runbook(project_path(self.runbook)).window_hours * 3600


class Plan(_Strict):
    name: str
    description: str = ""
    report_at: str | None = Field("06:30", description="Morning report HH:MM, or null.")
    late_start_min: str = Field("2h", description="Least window left to start a night late.")
    notify: NotifySpec | None = Field(None, description="Command run on night end/fallback.")
    nights: list[NightSpec] = Field(min_length=1)

    @field_validator("report_at")
    @classmethod
    def _report_at(cls, v: str | None) -> str | None:
        if v is not None and not _HHMM.match(v):
            raise ValueError(f"{v!r}: use local HH:MM (e.g. '06:30') or null")
        return v

    @field_validator("late_start_min")
    @classmethod
    def _late(cls, v: str) -> str:
        parse_duration(v)
        return v

    @field_validator("nights")
    @classmethod
    def _nights(cls, v: list[NightSpec]) -> list[NightSpec]:
        if v[0].requires != "none":
            raise ValueError("the first night cannot require a previous night")
        names = [n.name for n in v]
        if len(set(names)) != len(names):
            raise ValueError(f"night names must be unique: {names}")
        return v


# ------------------------------------------------------------------------------------------
# loading
def resolve_plan_path(name_or_path: str) -> Path:
    """A path to a plan file, or a plan name looked up in ``./configs/plans`` then in the
    shipped plans (:func:`orchestrator.core.datafiles.plan_dirs`)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise PlanError(f"{p}: plan file not found")
        return p.resolve()
    for d in plan_dirs():
        if (d / f"{name_or_path}.yaml").is_file():
            return d / f"{name_or_path}.yaml"
    known = sorted({f.stem for d in plan_dirs() for f in d.glob("*.yaml")})
    where = " or ".join(str(d) for d in plan_dirs())
    raise PlanError(f"plan {name_or_path!r} not found in {where} (known: {known})")


def project_path(path: str) -> Path:
    """A config or runbook path: the working directory's copy first, then the shipped one."""
    return resolve_data(path)


def load_plan(path: str | Path) -> Plan:
    """Parse and validate a plan file, including every night's config with its overrides."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{path}: plan file not found")
    try:
        raw = yaml.safe_load(read_utf8(path, "plan"))
    except ConfigError as exc:
        raise PlanError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise PlanError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise PlanError(f"{path}: top level must be a mapping")
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as exc:
        msg = format_validation_error(exc, str(path)).replace("configuration", "plan")
        raise PlanError(msg) from None
    for i, night in enumerate(plan.nights):
        for key in ("config", "runbook"):
            if not project_path(getattr(night, key)).is_file():
                raise PlanError(
                    f"{path}: nights.{i}.{key}: file not found: {project_path(getattr(night, key))}"
                )
        check_overrides(night.config, night.overrides, f"{path}: nights.{i}.overrides")
        try:
            load_runbook(project_path(night.runbook))
        except RunbookError as exc:
            raise PlanError(f"{path}: nights.{i}.runbook: {exc}") from None
    return plan


def check_overrides(config: str, overrides: dict[str, Any], where: str) -> None:
    """Raise PlanError unless ``config`` + ``overrides`` load as the worker will load them:
    ``trainer.config.load_config`` with the same ``--set`` items the night passes
    (:func:`orchestrator.night.history.override_args`), so every spelling the worker accepts
    (``evaluation.eval_frequency`` beside ``experiment.eval_frequency``...) is accepted here."""
    try:
        load_config(project_path(config), override_args(overrides))
    except ConfigError as exc:
        raise PlanError(f"{where}: {exc}") from None


# ------------------------------------------------------------------------------------------
# timing
def local_now() -> datetime:
    return datetime.now().astimezone()


def at_or_after(hhmm: str, t: datetime) -> datetime:
    """The first local HH:MM at or after ``t``."""
    h, m = (int(x) for x in hhmm.split(":"))
    day = t.astimezone().date()
    for offset in (-1, 0, 1, 2):
        cand = datetime.combine(day + timedelta(days=offset), time(h, m)).astimezone()
        if cand >= t:
            return cand
    raise AssertionError("unreachable")


def first_window(spec: NightSpec, plan: Plan, now: datetime, start_now: bool) -> datetime:
    """Window start of the plan's first night (see the module docstring)."""
    if start_now or spec.start == "after_previous":
        return now
    current = at_or_after(spec.start, now - timedelta(days=1, seconds=-1))
    if current > now:  # the most recent occurrence is before now, not this one
        current -= timedelta(days=1)
    left = (current + timedelta(seconds=spec.window_s) - now).total_seconds()
    if left >= parse_duration(plan.late_start_min):
        return current
    return at_or_after(spec.start, now)


def _set_window(night: Night, start: datetime, window_s: float) -> None:
    night.window_start = start.isoformat(timespec="seconds")
    night.deadline = (start + timedelta(seconds=window_s)).isoformat(timespec="seconds")


def build_state(plan: Plan, plan_file: str | Path, now: datetime, start_now: bool) -> State:
    """A fresh state: every night pending, fixed windows computed, night 2's spec provisional."""
    state = State(
        plan=PlanRecord(
            name=plan.name,
            file=str(Path(plan_file).resolve()),
            kind="sequential" if len(plan.nights) > 1 else "single",
            started_at=now.isoformat(timespec="seconds"),
            report_time=plan.report_at,
        )
    )
    for i, spec in enumerate(plan.nights):
        night = Night(
            name=f"n{i + 1}-{spec.name}",
            index=i,
            config=str(project_path(spec.config)),
            runbook=str(project_path(spec.runbook)),
            overrides=dict(spec.overrides),
        )
        if i == 0:
            _set_window(night, first_window(spec, plan, now, start_now), spec.window_s)
        elif spec.start != "after_previous" and state.nights[-1].deadline:
            prev_deadline = parse_iso(state.nights[-1].deadline)
            _set_window(night, at_or_after(spec.start, prev_deadline), spec.window_s)
        state.nights.append(night)
    state.next_start = next_start(state)
    return state


def next_start(state: State) -> str | None:
    """Window start of the first pending night whose window is known, or None."""
    for night in state.nights:
        if night.status == "pending" and night.window_start:
            return night.window_start
    return None


# ------------------------------------------------------------------------------------------
# the night-2 decision
def decide_night(state: State, plan: Plan, index: int, now: datetime) -> DecisionRecord:
    """Fix night ``index``'s spec once the previous night ended; record and return the decision.

    ``requires: previous_succeeded`` met → the planned config; else ``repeat_previous`` → the
    previous night's config and runbook with its final overrides (what its fallbacks settled
    on; injected ``faults.*`` dropped), or ``skip``. An ``after_previous`` window starts now.
    """
    night, spec = state.nights[index], plan.nights[index]
    prev = state.nights[index - 1] if index > 0 else None
    evidence: dict[str, Any] = {}
    if prev is not None:
        evidence = {"previous": prev.name, "previous_status": prev.status}
        if prev.success is not None:
            evidence["previous_success_level"] = prev.success.level
    if spec.start == "after_previous" or not night.window_start:
        start = now if spec.start == "after_previous" else at_or_after(spec.start, now)
        _set_window(night, start, spec.window_s)
    action_kind = next_night(spec.requires, spec.otherwise, prev.status if prev else None)
    if action_kind == "run":
        trigger = f"{prev.name} succeeded" if prev and spec.requires != "none" else "no condition"
        action = f"run {night.name} as planned ({Path(night.config).name})"
    elif action_kind == "skip" or prev is None:
        trigger = f"{prev.name} ended {prev.status}" if prev else "no previous night"
        night.end("skipped", f"{trigger}; the plan skips {spec.name} in that case")
        action = f"skip {night.name}"
    else:
        learned = learned_overrides(prev.overrides)
        base = re.sub(r"^n\d+-", "", prev.name)
        night.name = f"n{index + 1}-{base}"
        night.config, night.runbook, night.overrides = prev.config, prev.runbook, learned
        trigger = f"{prev.name} ended {prev.status}, not succeeded"
        action = f"repeat {base} ({Path(prev.config).name}) with its final overrides"
        evidence["overrides"] = learned
    decision = DecisionRecord(
        kind="plan", trigger=trigger, action=action, at=now_iso(), evidence=evidence
    )
    night.decisions.append(decision)
    state.next_start = next_start(state)
    return decision


# ------------------------------------------------------------------------------------------
# windows that passed while nothing ran
def close_night(night: Night, reason: str) -> None:
    """End a started night that cannot continue: partial with its best evaluated checkpoint
    (:mod:`orchestrator.policy.results`), else failed."""
    found = results_of(night)
    record_results(night, found)
    evaluated = found.best_evaluated and found.final is not None
    status = passed_window_status(started=True, evaluated_checkpoint=evaluated)
    night.end(status, reason, keep_ended_at=True)  # type: ignore[arg-type]


def reconcile(state: State, now: datetime) -> list[str]:
    """Mark nights whose deadline passed while nothing ran; return what changed (for the log)."""
    changed = []
    for night in state.nights:
        if night.status in ENDED or not night.deadline or parse_iso(night.deadline) > now:
            continue
        window = f"{night.window_start} – {night.deadline}"
        reason = f"its window {window} passed while no daemon was running"
        started = night.status != "pending" or bool(night.attempts)
        if started:
            close_night(night, reason)
        else:
            night.end(passed_window_status(started, False), reason)  # type: ignore[arg-type]
        changed.append(f"{night.name}: {night.status} ({night.reason})")
    state.next_start = next_start(state)
    return changed
