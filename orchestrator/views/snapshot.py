"""Immutable snapshots of a state dir for the status screen and the morning report.

    src = SnapshotSource(Path("var"))
    snap = src.take()            # never raises; a missing reading is None ("N/A" on screen)

Sources, and nothing else (the worker is never contacted):

- ``STATE_DIR/state.json`` through :func:`orchestrator.core.state.read_snapshot` (re-read on every
  ``take``; a read that fails mid-replace keeps the previous state and sets ``stale``);
- each attempt's ``events.jsonl``, tailed incrementally with :class:`trainer.events_read.EventTail`
  (a 100 MB file is read once, then only its new bytes), folded by
  :class:`orchestrator.core.fold.RunFold` (the one fold the supervisor and the report use too);
- each attempt's ``samples.jsonl`` (supervisor memory samples: ``ts``, ``worker_rss``,
  ``tree_rss``, ``sys_available``, ``swap_used``, ``gpu_used`` with ``gpu_total`` and
  ``gpu_whole_card``, ``tree_mem`` with its ``tree_measure`` pss|uss|rss; bytes), folded the
  same way;
- the night's runbook, for display thresholds (:class:`Thresholds`; N/A when it cannot load).

Paths recorded in the state (run dirs, runbooks) are resolved against, in order: the path as
written, the state dir, the part from ``runs/`` on inside the state dir (a copied state dir),
and the project root — so a state dir can be moved or copied and still be read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.core.datafiles import PROJECT_ROOT
from orchestrator.core.fold import SAMPLES_FILE, RunFold, RunView, num, sample_tail
from orchestrator.core.lock import lock_owner
from orchestrator.core.runbook import device_ceiling
from orchestrator.core.state import Attempt, Fallback, Night, State, parse_iso, read_snapshot
from orchestrator.core.units import GB
from orchestrator.policy import forecast
from trainer.events import EVENTS_FILE
from trainer.events_read import EventTail


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
    memory_ceiling_gb: float | None = None  # the HOST ceiling (worker tree memory)
    device_fraction: float | None = None  # the DEVICE ceiling, of the device's own total
    swap_growth_gb: float | None = None
    epoch_minutes_good: float | None = None
    epoch_minutes_warning: float | None = None
    grad_norm_good: float | None = None
    grad_norm_warning: float | None = None
    feature_variance_good: float | None = None
    feature_variance_warning: float | None = None
    window_hours: float | None = None
    final_eval_minutes: float | None = None
    # The recipe's expectations (runbook ``expectations``) as (low, high), either None: the
    # screen shades against these where they exist, else against the display bands above.
    expected_epoch_minutes: tuple[float | None, float | None] | None = None
    expected_memory_gb: tuple[float | None, float | None] | None = None
    problem: str | None = None

    def device_ceiling_gb(self, total: int | None) -> float | None:
        """The device ceiling in GB for a device of ``total`` bytes (None: unknown)."""
        if self.device_fraction is None or not total:
            return None
        return device_ceiling(self.device_fraction, total) / GB

    def ceilings_text(self, total: int | None) -> str:
        """ "host 28 GB · device 73.6 GB (92% of 80.0 GB)"; the device part says what it is
        a share of when the device total is unknown, and is absent without a fraction."""
        host = f"host {self.memory_ceiling_gb:g} GB" if self.memory_ceiling_gb else "host N/A"
        if self.device_fraction is None:
            return host
        share = f"{self.device_fraction:.0%}"
        dev = self.device_ceiling_gb(total)
        if dev is None or total is None:
            return f"{host} · device {share} of its total"
        return f"{host} · device {dev:.1f} GB ({share} of {total / GB:.1f} GB)"


def device_total(run: RunView) -> int | None:
    """The device's own memory: what the worker reports, else NVML's total of the card."""
    return run.device_total or run.sample_peaks.get("gpu_total")


def whole_card(run: RunView) -> bool:
    """Whether a GPU reading was the whole card's (NVML matched none of the worker's pids)."""
    return bool(run.sample_peaks.get("gpu_whole_card"))


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


def _expected(rb: Any, measure: str) -> tuple[float | None, float | None] | None:
    """(low, high) of the runbook's expectation for ``measure`` (None: it has none)."""
    for e in _get(rb, "expectations") or []:
        if _get(e, "measure") == measure:
            return num(_get(e, "low")), num(_get(e, "high"))
    return None


def memory_peak(run: RunView) -> int | None:
    """The night's memory peak in bytes, the reading its ``memory_peak_gb`` expectation is
    held to: the largest of the worker tree's peak (PSS where measured, else RSS), the GPU's
    and the device's."""
    peaks = run.sample_peaks
    tree = peaks.get("tree_mem", peaks.get("tree_rss"))
    vals = [v for v in (tree, peaks.get("gpu_used"), run.device_mem_peak) if v is not None]
    return max(vals) if vals else None


def load_thresholds(path: Path | None) -> Thresholds:
    """Thresholds of a runbook file, read with :func:`orchestrator.core.runbook.load_runbook`
    (plain YAML of the same shape while that module is absent). Never raises: a problem → all
    None."""
    if path is None:
        return Thresholds(problem="runbook not found")
    try:
        try:
            from orchestrator.core.runbook import load_runbook
        except ImportError:
            rb: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
        else:
            rb = load_runbook(path)
        n = num
        return Thresholds(
            name=_get(rb, "name"),
            memory_good_gb=n(_get(rb, "memory", "good_gb")),
            memory_warning_gb=n(_get(rb, "memory", "warning_gb")),
            memory_ceiling_gb=n(_get(rb, "memory", "ceiling_gb")),
            device_fraction=n(_get(rb, "memory", "device_fraction")),
            swap_growth_gb=n(_get(rb, "memory", "swap_growth_gb")),
            epoch_minutes_good=n(_get(rb, "display", "epoch_minutes", "good")),
            epoch_minutes_warning=n(_get(rb, "display", "epoch_minutes", "warning")),
            grad_norm_good=n(_get(rb, "display", "grad_norm", "good")),
            grad_norm_warning=n(_get(rb, "display", "grad_norm", "warning")),
            feature_variance_good=n(_get(rb, "display", "feature_variance", "good")),
            feature_variance_warning=n(_get(rb, "display", "feature_variance", "warning")),
            window_hours=n(_get(rb, "window_hours")),
            final_eval_minutes=n(_get(rb, "final_eval_minutes")),
            expected_epoch_minutes=_expected(rb, "epoch_minutes"),
            expected_memory_gb=_expected(rb, "memory_peak_gb"),
        )
    except Exception as exc:  # a viewer shows N/A rather than failing
        return Thresholds(problem=f"runbook {path}: {exc}".splitlines()[0][:200])


# ---------------------------------------------------------------------------------------------
# events of a night, folded (orchestrator.core.fold)
def read_night_run(state_dir: Path, night: Night, history: int | None = None) -> RunView:
    """All events and samples of a night's attempts, read once (for the report)."""
    tracker = RunFold(history)
    for att in night.attempts:
        run_dir = resolve_path(state_dir, att.run_dir)
        if run_dir is None:
            continue
        tracker.feed(att.index, EventTail(run_dir / EVENTS_FILE).poll())
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


def shown_night(night: Night, owner_alive: bool) -> Night:
    """The night as the screen shows it. A graceful stop is stored ``stopped``; a state file
    written before that (``running``, last attempt ``stopped``, nobody holding the state dir)
    reads ``stopped`` too — resumable, not running."""
    last = night.attempts[-1] if night.attempts else None
    stopped = last is not None and last.exit_kind == "stopped" and not owner_alive
    if night.status == "running" and stopped:
        return night.model_copy(update={"status": "stopped"})
    return night


def daemon_alive(state: State) -> bool | None:
    """Whether the daemon recorded in the state is alive (pid + create time); None if none."""
    if state.daemon is None:
        return None
    from orchestrator.core.system import process_alive

    return process_alive(state.daemon.pid, state.daemon.create_time)


def make_forecast(night: Night | None, run: RunView, th: Thresholds, now: float) -> Forecast:
    """The night runner's latest recorded forecast if there is one, else the same model
    (:func:`orchestrator.policy.forecast.finish`) on what the screen has folded."""
    if night is None:
        return Forecast()
    deadline = iso_ts(night.deadline)
    reserve = 60.0 * (th.final_eval_minutes or 0.0)
    finish, source = None, None
    if night.forecasts:
        finish, source = iso_ts(night.forecasts[-1].projected_finish), "supervisor"
    total = run.total_epochs or night.epochs_planned or 0
    done = run.epochs_done or 0
    if finish is None:
        finish = forecast.finish(
            run.epoch_seconds,
            run.eval_seconds,
            run.checkpoint_seconds,
            run.epoch_end_ts,
            done,
            total,
            reserve,
        )
        source = "estimate" if finish is not None else None
    pace = None
    if deadline is not None:
        pace = forecast.pace_needed(deadline, reserve, now, done, total)
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
        self._tracker = RunFold(history)
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
                else _unreadable(self.state_dir)
            )
            return Snapshot(now, self.state_dir, None, problem=why)
        night = pick_night(state)
        if night is None:
            return Snapshot(now, self.state_dir, state, problem="the plan has no nights")
        key = (night.index, night.name)
        if key != self._night_key:
            self._night_key, self._tracker, self._tails = key, RunFold(self.history), {}
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
            self._tracker.feed(att.index, events.poll())
            self._tracker.feed_samples(samples.poll())
        run = self._tracker.view()
        if night.runbook not in self._thresholds:
            self._thresholds[night.runbook] = load_thresholds(
                resolve_path(self.state_dir, night.runbook)
            )
        th = self._thresholds[night.runbook]
        shown = shown_night(night, lock_owner(self.state_dir) is not None)
        if shown is not night:
            state = state.model_copy(
                update={"nights": [shown if x is night else x for x in state.nights]}
            )
        return Snapshot(
            taken_at=now,
            state_dir=self.state_dir,
            state=state,
            stale=stale,
            daemon_alive=daemon_alive(state),
            night=shown,
            attempt=night.attempts[-1] if night.attempts else None,
            run_dir=run_dir,
            run=run,
            thresholds=th,
            forecast=make_forecast(night, run, th, now),
            fallbacks=tuple(reversed(night.fallbacks)),
        )


def _unreadable(state_dir: Path) -> str:
    """Why the state file cannot be shown, in StateStore's words (nothing moved aside)."""
    from orchestrator.core.state import StateError, StateStore

    try:
        StateStore(state_dir).load(set_aside=False)
    except (StateError, OSError, UnicodeDecodeError) as exc:
        text = str(exc).splitlines()[0]
        cause = text.split(": ", 1)[1] if ": " in text else text
        return f"state.json cannot be read: {cause} ({state_dir / 'state.json'})"
    return f"{state_dir / 'state.json'} cannot be read (corrupt or from a newer hjepa-night)"
