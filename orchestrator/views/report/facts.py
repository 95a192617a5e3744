"""What the morning report knows about one night, gathered once: :class:`NightFacts`.

    f = NightFacts(Path("var"), state, state.nights[0])
    f.final, f.base, f.best_checkpoint, f.newest_checkpoint, f.used_s, f.median_img_s()

It reads the state file's record of the night, the night's
:class:`~orchestrator.views.snapshot.RunView` (every attempt's ``events.jsonl`` and
``samples.jsonl``) and its runbook's thresholds. Final and random-init metrics and the best
checkpoint are the night's record (``final_metrics``, ``baseline_metrics``,
``best_checkpoint``: :mod:`orchestrator.policy.results`, recorded as the night runs and when it
ends), never recomputed here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestrator.core.runbook import Check, RunbookError, load_runbook
from orchestrator.core.state import Metrics, Night, State
from orchestrator.policy import forecast
from orchestrator.policy.runbooks import runbook_name_for
from orchestrator.views.snapshot import (
    RunView,
    Thresholds,
    iso_ts,
    load_thresholds,
    read_night_run,
    resolve_path,
)
from trainer.events import EVENTS_FILE, RESOLVED_CONFIG_FILE
from trainer.events_read import read_events


def is_demo(state: State, night: Night) -> bool:
    """A demo night: the demo plan, the demo runbook, or a recipe the policy's table runs under
    it (:func:`orchestrator.policy.runbooks.runbook_name_for`)."""
    return bool(
        (state.plan and state.plan.name == "demo")
        or Path(night.runbook).stem == "demo"
        or runbook_name_for(night.config) == "demo"
    )


def display_path(state_dir: Path, recorded: str) -> str:
    """A recorded path as a command can use it from here: found on disk, else a relative
    ``runs/...`` path taken inside the state dir, else as recorded."""
    found = resolve_path(state_dir, recorded)
    if found is not None:
        return str(found)
    p = Path(recorded)
    if not p.is_absolute() and "runs" in p.parts:
        return str(state_dir.joinpath(*p.parts[p.parts.index("runs") :]))
    return recorded


def check_specs(runbook: Path | None) -> dict[str, Check]:
    """The runbook's success criteria by the name the state records for each check (its
    ``Check.name``); empty when the runbook cannot be read (the report words the bare name)."""
    if runbook is None:
        return {}
    try:
        rb = load_runbook(runbook)
    except (RunbookError, OSError):
        return {}
    s = rb.success
    return {c.name: c for c in (*s.must, *s.should, *s.stretch)}


class NightFacts:
    """Everything one night's section needs, gathered once."""

    def __init__(self, state_dir: Path, state: State, night: Night) -> None:
        self.state_dir, self.state, self.night = state_dir, state, night
        self.run: RunView = read_night_run(state_dir, night)
        rb_path = resolve_path(state_dir, night.runbook)
        self.th: Thresholds = load_thresholds(rb_path)
        self.check_specs: dict[str, Check] = check_specs(rb_path)
        self.demo = is_demo(state, night)
        self.start = iso_ts(night.started_at)
        self.end = iso_ts(night.ended_at)
        self.window_start = iso_ts(night.window_start)
        self.deadline = iso_ts(night.deadline)
        last = night.attempts[-1] if night.attempts else None
        self.last_run_dir = resolve_path(state_dir, last.run_dir) if last else None
        self.final: Metrics | None = night.final_metrics
        self.base: Metrics | None = night.baseline_metrics

    def attempt_events(self, kind: str) -> list[tuple[int, dict[str, Any]]]:
        """(attempt index, event) for every event of ``kind`` in the night's attempts."""
        out = []
        for a in self.night.attempts:
            run_dir = resolve_path(self.state_dir, a.run_dir)
            if run_dir is not None:
                out += [
                    (a.index, e)
                    for e in read_events(run_dir / EVENTS_FILE)
                    if e.get("type") == kind
                ]
        return out

    def overflow_steps(self) -> dict[int, int]:
        """Gradient-overflow steps skipped (fp16), per attempt that had any."""
        per: dict[int, int] = {}
        for index, ev in self.attempt_events("step"):
            n = int(ev.get("overflow_steps") or 0)
            if n:
                per[index] = max(per.get(index, 0), n)
        return per

    @property
    def best_checkpoint(self) -> str | None:
        """The best checkpoint the night recorded (by the recipe's metric), as a usable path;
        None when none was recorded (see :attr:`newest_checkpoint`)."""
        recorded = self.night.best_checkpoint
        return display_path(self.state_dir, recorded) if recorded else None

    @property
    def newest_checkpoint(self) -> str | None:
        """The newest checkpoint in the events: what a night with no best recorded yet (still
        running, or stopped before its first evaluation) offers to resume from."""
        path = self.run.checkpoints[-1].get("path") if self.run.checkpoints else None
        return display_path(self.state_dir, str(path)) if path else None

    @property
    def resolved_config(self) -> str:
        if self.last_run_dir is not None:
            return str(self.last_run_dir / RESOLVED_CONFIG_FILE)
        return self.night.config

    @property
    def used_s(self) -> float | None:
        end = self.end if self.end is not None else time.time()
        return end - self.start if self.start is not None else None

    @property
    def window_s(self) -> float | None:
        if self.window_start is None or self.deadline is None:
            return None
        return self.deadline - self.window_start

    @property
    def pace_s(self) -> float | None:
        """The pace needed from the window's start: ``policy.forecast.pace_needed`` with none
        of the planned epochs done (the screen asks the same function from now)."""
        planned = self.night.epochs_planned or self.run.total_epochs
        if self.window_start is None or self.deadline is None or not planned:
            return None
        reserve = 60 * (self.th.final_eval_minutes or 0)
        return forecast.pace_needed(self.deadline, reserve, self.window_start, 0, planned)

    def median_img_s(self, attempt: int | None = None) -> float | None:
        vals = sorted(
            p.img_per_s
            for p in self.run.steps
            if p.img_per_s is not None and attempt in (None, p.attempt)
        )
        return vals[len(vals) // 2] if vals else None

    def probe_gain(self) -> float | None:
        if self.final is None or self.base is None:
            return None
        if self.final.linear_probe is None or self.base.linear_probe is None:
            return None
        return self.final.linear_probe - self.base.linear_probe
