"""Immutable snapshots of a state dir for the status screen and the morning report.

    src = SnapshotSource(Path("var"))
    snap = src.take()            # never raises; a missing reading is None ("N/A" on screen)

Sources, and nothing else (the worker is never contacted):

- ``STATE_DIR/state.json`` through :func:`orchestrator.state.read_snapshot` (re-read on every
  ``take``; a read that fails mid-replace keeps the previous state and sets ``stale``);
- each attempt's ``events.jsonl``, tailed incrementally with :class:`trainer.events.EventTail`
  (a 100 MB file is read once, then only its new bytes), folded by :class:`RunTracker`;
- each attempt's ``samples.jsonl`` (supervisor memory samples: ``ts``, ``worker_rss``,
  ``tree_rss``, ``sys_available``, ``swap_used``, ``gpu_used``, ``tree_mem`` with its
  ``tree_measure`` pss|uss|rss; bytes), folded the same way;
- the night's runbook, for display thresholds (:class:`Thresholds`; N/A when it cannot load).

Paths recorded in the state (run dirs, runbooks) are resolved against, in order: the path as
written, the state dir, the part from ``runs/`` on inside the state dir (a copied state dir),
and the project root — so a state dir can be moved or copied and still be read.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.state import Attempt, Fallback, Night, State, parse_iso, read_snapshot
from trainer.events import EVENTS_FILE, EventTail

SAMPLES_FILE = "samples.jsonl"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
GB = 1024**3


def resolve_path(state_dir: Path, recorded: str | None) -> Path | None:
    """Find a path recorded in the state; None when it is empty or exists nowhere we look."""
    if not recorded:
        return None
    p = Path(recorded)
    candidates = [p] if p.is_absolute() else [p, state_dir / p, PROJECT_ROOT / p]
    if "runs" in p.parts:
        candidates.append(state_dir.joinpath(*p.parts[p.parts.index("runs") :]))
    for c in candidates:
        if c.exists():
            return c
    return None


def iso_ts(text: str | None) -> float | None:
    """ISO time from the state → unix seconds, or None."""
    if not text:
        return None
    try:
        return parse_iso(text).timestamp()
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# runbook thresholds
@dataclass(frozen=True)
class Thresholds:
    """Display thresholds from the runbook (``memory``, ``display``, window); None = unknown."""

    name: str | None = None
    memory_good_gb: float | None = None
    memory_warning_gb: float | None = None
    memory_ceiling_gb: float | None = None
    swap_growth_gb: float | None = None
    epoch_minutes_good: float | None = None
    epoch_minutes_warning: float | None = None
    grad_norm_good: float | None = None
    grad_norm_warning: float | None = None
    feature_std_good: float | None = None
    feature_std_warning: float | None = None
    window_hours: float | None = None
    final_eval_minutes: float | None = None
    problem: str | None = None


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def load_thresholds(path: Path | None) -> Thresholds:
    """Thresholds of a runbook file, read with ``orchestrator.runbook.load_runbook`` (plain YAML
    of the same shape while that module is absent). Never raises: a problem → all None."""
    if path is None:
        return Thresholds(problem="runbook not found")
    try:
        try:
            from orchestrator.runbook import load_runbook
        except ImportError:
            rb: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
        else:
            rb = load_runbook(path)
        n = _num
        return Thresholds(
            name=_get(rb, "name"),
            memory_good_gb=n(_get(rb, "memory", "good_gb")),
            memory_warning_gb=n(_get(rb, "memory", "warning_gb")),
            memory_ceiling_gb=n(_get(rb, "memory", "ceiling_gb")),
            swap_growth_gb=n(_get(rb, "memory", "swap_growth_gb")),
            epoch_minutes_good=n(_get(rb, "display", "epoch_minutes", "good")),
            epoch_minutes_warning=n(_get(rb, "display", "epoch_minutes", "warning")),
            grad_norm_good=n(_get(rb, "display", "grad_norm", "good")),
            grad_norm_warning=n(_get(rb, "display", "grad_norm", "warning")),
            feature_std_good=n(_get(rb, "display", "feature_std", "good")),
            feature_std_warning=n(_get(rb, "display", "feature_std", "warning")),
            window_hours=n(_get(rb, "window_hours")),
            final_eval_minutes=n(_get(rb, "final_eval_minutes")),
        )
    except Exception as exc:  # a viewer shows N/A rather than failing
        return Thresholds(problem=f"runbook {path}: {exc}".splitlines()[0][:200])


# ---------------------------------------------------------------------------------------------
# events of a night, folded
@dataclass(frozen=True)
class StepPoint:
    ts: float
    attempt: int
    epoch: int
    step: int
    loss: float
    levels: tuple[float, ...]
    grad_norm: float | None
    lr: float | None
    img_per_s: float | None


@dataclass(frozen=True)
class RunView:
    """What the events (and samples) of a night's attempts say, up to now."""

    started: dict[str, Any] | None = None  # latest ``started`` event
    steps: tuple[StepPoint, ...] = ()
    epochs: tuple[dict[str, Any], ...] = ()  # epoch_end events (+ "attempt")
    evals: tuple[dict[str, Any], ...] = ()  # eval events (+ "attempt")
    checkpoints: tuple[dict[str, Any], ...] = ()
    fatal: dict[str, Any] | None = None  # of the latest attempt, if it died
    fatals: tuple[dict[str, Any], ...] = ()  # every fatal event (+ "attempt")
    finished: dict[str, Any] | None = None  # of the latest attempt, if it finished
    total_epochs: int | None = None  # latest known (started, control, epoch_end)
    epoch: int | None = None  # epoch in progress (or last seen)
    step: int | None = None
    epochs_done: int | None = None  # last epoch_end's epoch
    device_mem: dict[str, int] = field(default_factory=dict)
    device_mem_peak: int | None = None
    device_series: tuple[tuple[float, int], ...] = ()  # (ts, largest device_mem reading)
    phase: str | None = None
    last_heartbeat_ts: float | None = None
    last_event_ts: float | None = None
    samples: tuple[dict[str, Any], ...] = ()
    sample_peaks: dict[str, int] = field(default_factory=dict)
    swap_first: int | None = None

    @property
    def last_step(self) -> StepPoint | None:
        return self.steps[-1] if self.steps else None

    @property
    def last_eval(self) -> dict[str, Any] | None:
        return self.evals[-1] if self.evals else None

    @property
    def last_sample(self) -> dict[str, Any] | None:
        return self.samples[-1] if self.samples else None

    def recent_epoch_seconds(self, n: int = 3) -> float | None:
        secs = [e["seconds"] for e in self.epochs[-n:] if _num(e.get("seconds")) is not None]
        return statistics.fmean(secs) if secs else None


def mem_value(device_mem: dict[str, Any] | None) -> int | None:
    """The largest reading of a ``device_mem`` dict (reserved/driver/allocated), or None."""
    vals = [v for v in (device_mem or {}).values() if _num(v) is not None]
    return int(max(vals)) if vals else None


class RunTracker:
    """Folds events and samples of one night's attempts into a :class:`RunView`.

    ``history`` bounds the step/sample series kept (the status screen keeps the recent past;
    the report passes None and keeps everything). Feed attempts in index order."""

    def __init__(self, history: int | None = None) -> None:
        self._steps: deque[StepPoint] = deque(maxlen=history)
        self._samples: deque[dict[str, Any]] = deque(maxlen=history)
        self._epochs: list[dict[str, Any]] = []
        self._evals: list[dict[str, Any]] = []
        self._ckpts: deque[dict[str, Any]] = deque(maxlen=history)
        self._dev: deque[tuple[float, int]] = deque(maxlen=history)
        self._fatals: list[dict[str, Any]] = []
        self._v: dict[str, Any] = {"sample_peaks": {}}

    def feed_events(self, attempt: int, events: list[dict[str, Any]]) -> None:
        v = self._v
        for ev in events:
            kind = ev.get("type")
            ts = _num(ev.get("ts"))
            v["last_event_ts"] = ts
            mem = ev.get("device_mem") if isinstance(ev.get("device_mem"), dict) else None
            if mem:
                v["device_mem"] = dict(mem)
                peak = mem_value(mem)
                if peak is not None and ts is not None:
                    self._dev.append((ts, peak))
                if peak is not None:
                    v["device_mem_peak"] = max(peak, v.get("device_mem_peak") or 0)
            if kind in ("started", "heartbeat", "step", "epoch_end", "eval", "resumed"):
                if isinstance(ev.get("epoch"), int):
                    v["epoch"] = ev["epoch"]
                if isinstance(ev.get("step"), int):
                    v["step"] = ev["step"]
            if kind == "started":
                v.update(started=ev, fatal=None, finished=None, phase="startup")
                v["total_epochs"] = ev.get("epochs", v.get("total_epochs"))
                v["last_heartbeat_ts"] = ts
                v["epoch"] = ev.get("start_epoch", v.get("epoch"))
            elif kind == "heartbeat":
                v.update(phase=ev.get("phase"), last_heartbeat_ts=ts)
            elif kind == "step" and _num(ev.get("loss")) is not None:
                levels = tuple(x for x in ev.get("loss_levels") or [] if _num(x) is not None)
                self._steps.append(
                    StepPoint(
                        ts or 0.0,
                        attempt,
                        int(ev.get("epoch") or 0),
                        int(ev.get("step") or 0),
                        float(ev["loss"]),
                        levels,
                        _num(ev.get("grad_norm")),
                        _num(ev.get("lr")),
                        _num(ev.get("img_per_s")),
                    )
                )
                v.update(phase="train", last_heartbeat_ts=ts)
            elif kind == "epoch_end":
                self._epochs.append({**ev, "attempt": attempt})
                v["epochs_done"] = ev.get("epoch")
                v["total_epochs"] = ev.get("total_epochs", v.get("total_epochs"))
            elif kind == "eval":
                self._evals.append({**ev, "attempt": attempt})
            elif kind == "checkpoint":
                self._ckpts.append({**ev, "attempt": attempt})
            elif kind == "control" and isinstance(ev.get("epochs"), int):
                v["total_epochs"] = ev["epochs"]
            elif kind == "fatal":
                v["fatal"] = {**ev, "attempt": attempt}
                self._fatals.append(v["fatal"])
            elif kind == "finished":
                v["finished"] = {**ev, "attempt": attempt}

    def feed_samples(self, samples: list[dict[str, Any]]) -> None:
        peaks = self._v["sample_peaks"]
        for s in samples:
            self._samples.append(s)
            for key in ("worker_rss", "tree_rss", "tree_mem", "gpu_used", "swap_used"):
                if _num(s.get(key)) is not None:
                    peaks[key] = max(int(s[key]), peaks.get(key, 0))
            avail = _num(s.get("sys_available"))
            if avail is not None:
                peaks["sys_available_min"] = min(int(avail), peaks.get("sys_available_min", 2**62))
            if self._v.get("swap_first") is None and _num(s.get("swap_used")) is not None:
                self._v["swap_first"] = int(s["swap_used"])

    def view(self) -> RunView:
        v = self._v
        return RunView(
            started=v.get("started"),
            steps=tuple(self._steps),
            epochs=tuple(self._epochs),
            evals=tuple(self._evals),
            checkpoints=tuple(self._ckpts),
            fatal=v.get("fatal"),
            fatals=tuple(self._fatals),
            finished=v.get("finished"),
            total_epochs=v.get("total_epochs"),
            epoch=v.get("epoch"),
            step=v.get("step"),
            epochs_done=v.get("epochs_done"),
            device_mem=dict(v.get("device_mem") or {}),
            device_mem_peak=v.get("device_mem_peak"),
            device_series=tuple(self._dev),
            phase=v.get("phase"),
            last_heartbeat_ts=v.get("last_heartbeat_ts"),
            last_event_ts=v.get("last_event_ts"),
            samples=tuple(self._samples),
            sample_peaks=dict(v["sample_peaks"]),
            swap_first=v.get("swap_first"),
        )


def parse_sample(line: str) -> dict[str, Any] | None:
    """One ``samples.jsonl`` line → dict with a numeric ``ts``, or None (bad lines skipped)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and _num(obj.get("ts")) is not None else None


def sample_tail(path: Path) -> EventTail:
    """Incremental reader of ``samples.jsonl``."""
    return EventTail(path, parse=parse_sample)


def read_night_run(state_dir: Path, night: Night, history: int | None = None) -> RunView:
    """All events and samples of a night's attempts, read once (for the report)."""
    tracker = RunTracker(history)
    for att in night.attempts:
        run_dir = resolve_path(state_dir, att.run_dir)
        if run_dir is None:
            continue
        tracker.feed_events(att.index, EventTail(run_dir / EVENTS_FILE).poll())
        tracker.feed_samples(sample_tail(run_dir / SAMPLES_FILE).poll())
    return tracker.view()


# ---------------------------------------------------------------------------------------------
# the snapshot
@dataclass(frozen=True)
class Forecast:
    """When the night's work ends vs the deadline. ``finish_ts`` is the end of training *plus*
    the final evaluation (the supervisor's ``projected_finish`` already includes it; the
    estimate adds the runbook's reserve once). ``source``: "supervisor", "estimate" or "ended".
    """

    finish_ts: float | None = None
    deadline_ts: float | None = None
    final_eval_minutes: float | None = None
    source: str | None = None
    pace_needed_s: float | None = None  # seconds per remaining epoch to end in time

    @property
    def margin_s(self) -> float | None:
        """Deadline − finish (final eval included once); negative = late."""
        if self.finish_ts is None or self.deadline_ts is None:
            return None
        return self.deadline_ts - self.finish_ts


@dataclass(frozen=True)
class Snapshot:
    """Everything one frame (or a report section) shows. Missing readings are None."""

    taken_at: float
    state_dir: Path
    state: State | None = None
    problem: str | None = None  # why there is nothing (better) to show
    stale: bool = False  # the last state read failed; this is the previous one
    daemon_alive: bool | None = None
    night: Night | None = None
    attempt: Attempt | None = None
    run_dir: Path | None = None
    run: RunView = field(default_factory=RunView)
    thresholds: Thresholds = field(default_factory=Thresholds)
    forecast: Forecast = field(default_factory=Forecast)
    fallbacks: tuple[Fallback, ...] = ()  # newest first


def pick_night(state: State) -> Night | None:
    """The night to show: the one running, else the latest that started, else the first."""
    if state.current_night is not None and 0 <= state.current_night < len(state.nights):
        return state.nights[state.current_night]
    started = [n for n in state.nights if n.status != "pending" or n.attempts]
    if started:
        return started[-1]
    return state.nights[0] if state.nights else None


def daemon_alive(state: State) -> bool | None:
    """Whether the daemon recorded in the state is alive (pid + create time); None if none."""
    if state.daemon is None:
        return None
    from orchestrator.system import process_alive

    return process_alive(state.daemon.pid, state.daemon.create_time)


def make_forecast(night: Night | None, run: RunView, th: Thresholds, now: float) -> Forecast:
    """The supervisor's latest forecast if there is one, else an estimate from epoch times."""
    if night is None:
        return Forecast()
    deadline = iso_ts(night.deadline)
    finish, source = None, None
    if night.forecasts:
        finish, source = iso_ts(night.forecasts[-1].projected_finish), "supervisor"
    total = run.total_epochs or night.epochs_planned
    done = run.epochs_done or 0
    per_epoch = run.recent_epoch_seconds()
    if finish is None and total and per_epoch and run.epochs:
        remaining = max(total - done, 0)
        reserve = 60.0 * (th.final_eval_minutes or 0.0)
        finish = float(run.epochs[-1]["ts"]) + remaining * per_epoch + reserve
        source = "estimate"
    pace = None
    if deadline is not None and total and total > done:
        budget = deadline - 60.0 * (th.final_eval_minutes or 0.0) - now
        pace = budget / (total - done) if budget > 0 else None
    if night.status not in ("running", "pending"):
        finish, source, pace = iso_ts(night.ended_at), "ended", None
    return Forecast(finish, deadline, th.final_eval_minutes, source, pace)


class SnapshotSource:
    """Takes snapshots of one state dir, reading the events of the shown night incrementally.

    ``history`` bounds the series kept per night (enough for the sparklines)."""

    def __init__(self, state_dir: Path, history: int = 600) -> None:
        self.state_dir = Path(state_dir)
        self.history = history
        self._state: State | None = None
        self._night_key: tuple[int, str] | None = None
        self._tracker = RunTracker(history)
        self._tails: dict[int, tuple[EventTail, EventTail]] = {}
        self._thresholds: dict[str, Thresholds] = {}

    def take(self, now: float | None = None) -> Snapshot:
        now = time.time() if now is None else now
        try:
            return self._take(now)
        except Exception as exc:  # the screen must survive anything on disk
            return Snapshot(now, self.state_dir, self._state, problem=f"snapshot failed: {exc!r}")

    def _take(self, now: float) -> Snapshot:
        state_path = self.state_dir / "state.json"
        fresh = read_snapshot(self.state_dir)
        stale = False
        if fresh is not None:
            self._state = fresh
        elif state_path.exists() and self._state is not None:
            stale = True
        elif not state_path.exists():
            self._state = None
        state = self._state
        if state is None:
            why = (
                f"no state file at {state_path} (no plan or night started here yet)"
                if not state_path.exists()
                else f"{state_path} cannot be read (corrupt or from a newer hjepa-night)"
            )
            return Snapshot(now, self.state_dir, None, problem=why)
        night = pick_night(state)
        if night is None:
            return Snapshot(now, self.state_dir, state, problem="the plan has no nights")
        key = (night.index, night.name)
        if key != self._night_key:
            self._night_key, self._tracker, self._tails = key, RunTracker(self.history), {}
        run_dir = None
        for att in night.attempts:
            path = resolve_path(self.state_dir, att.run_dir)
            if path is None:
                continue
            run_dir = path
            if att.index not in self._tails:
                self._tails[att.index] = (
                    EventTail(path / EVENTS_FILE),
                    sample_tail(path / SAMPLES_FILE),
                )
            events, samples = self._tails[att.index]
            self._tracker.feed_events(att.index, events.poll())
            self._tracker.feed_samples(samples.poll())
        run = self._tracker.view()
        if night.runbook not in self._thresholds:
            self._thresholds[night.runbook] = load_thresholds(
                resolve_path(self.state_dir, night.runbook)
            )
        th = self._thresholds[night.runbook]
        return Snapshot(
            taken_at=now,
            state_dir=self.state_dir,
            state=state,
            stale=stale,
            daemon_alive=daemon_alive(state),
            night=night,
            attempt=night.attempts[-1] if night.attempts else None,
            run_dir=run_dir,
            run=run,
            thresholds=th,
            forecast=make_forecast(night, run, th, now),
            fallbacks=tuple(reversed(night.fallbacks)),
        )
