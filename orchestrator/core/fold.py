"""The one fold of a worker's events: ``events.jsonl`` (and ``samples.jsonl``) → facts.

    fold = RunFold()
    fold.feed(attempt=1, events=EventTail(run_dir / EVENTS_FILE).poll(), read_mono=now_mono)
    fold.feed_samples(sample_tail(run_dir / SAMPLES_FILE).poll())
    view = fold.view()           # a frozen RunView: progress, epoch times, evals, checkpoints…

This is the only code that turns worker events into facts about a run. The supervisor folds
one attempt live (its liveness, the times the forecast needs, how the attempt ended), the
night runner folds an attempt from disk (checkpoints, ``best`` events, evals), the status
screen and the morning report fold every attempt of a night (series for sparklines and plots).
:func:`metrics_of` is the only place an ``eval`` event becomes :class:`Metrics`.

Facts, and what they mean:

- progress: ``epoch`` (in progress, or last seen), ``epochs_done`` (the newest ``epoch_end``;
  after a resume, the resumed epoch − 1 until then), ``step`` (optimizer steps so far),
  ``total_epochs`` (in force: ``started``, then live cuts from ``control`` and ``epoch_end``),
  ``phase`` (the worker's, from heartbeats; ``train`` once steps arrive).
- liveness: ``progress_ts`` (wall) and ``progress_mono`` (the worker's monotonic clock): the
  newest *progress* sign — a ``started``/``step``/``epoch_end``/``eval``/``checkpoint`` event,
  or a heartbeat's time minus its ``progress_age_s`` (the heartbeat thread keeps beating
  through slow phases and says how long the main loop has not progressed). An event without
  ``mono`` counts at ``read_mono`` (when it was read) if the reader gives one. ``step_s``: the
  worker's recent seconds per optimizer step. ``last_heartbeat_ts``: newest sign of life at all.
- times: ``epoch_seconds`` (per ``epoch_end``), ``eval_seconds`` (evals after epoch 0: the
  random-init baseline is not part of the training's cost), ``checkpoint_seconds``,
  ``epoch_end_ts`` (the forecast's anchor).
- results: ``evals``, ``checkpoints``, ``bests`` (``best`` events), ``pictures`` (the
  end-of-run pictures, ``trainer/eval/pictures.py``), each event with its
  ``attempt`` added; ``fatal`` (the first: with several ranks, the failing rank's comes before
  the "lost a peer" crashes of the others) / ``finished`` of the newest attempt (a ``started``
  clears them); ``fatals`` of every attempt.
- health: ``health`` events of the newest worker process (a ``started`` clears them), for the
  collapse/divergence judgement (``orchestrator/policy/health.py``).
- memory: ``device_mem`` (the newest reading, a dict), ``device_mem_now`` (its largest value),
  ``device_mem_peak``, ``device_total`` (the device's own memory), ``device_series``;
  supervisor samples (``samples``, ``sample_peaks`` — ``gpu_whole_card`` 1 when a GPU reading
  was the whole card's — ``swap_first``).

``history`` bounds the series kept (steps, samples, checkpoints, device readings): the status
screen keeps the recent past; the report, the supervisor and the night runner keep everything.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.state import Metrics
from orchestrator.policy import forecast
from trainer.events import EVENTS_FILE
from trainer.events_read import EventTail, read_events

SAMPLES_FILE = "samples.jsonl"
PROGRESS_EVENTS = ("started", "step", "epoch_end", "eval", "checkpoint")


def num(value: Any) -> float | None:
    """A JSON number as float; None for anything else (bools included)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def mem_value(device_mem: dict[str, Any] | None) -> int | None:
    """The largest reading of a ``device_mem`` dict (reserved/driver/allocated), or None;
    ``total`` is the device's capacity, not a reading (:func:`mem_total`)."""
    vals = [v for k, v in (device_mem or {}).items() if k != "total" and num(v) is not None]
    return int(max(vals)) if vals else None


def mem_total(device_mem: dict[str, Any] | None) -> int | None:
    """The device's own total memory a ``device_mem`` dict reports (CUDA, MPS), or None."""
    total = num((device_mem or {}).get("total"))
    return int(total) if total else None


def metrics_of(ev: dict[str, Any]) -> Metrics:
    """An ``eval`` event's metrics (the one conversion; kNN keys as strings, values floats)."""
    return Metrics(
        epoch=ev.get("epoch"),
        knn={str(k): float(v) for k, v in (ev.get("knn") or {}).items()},
        linear_probe=ev.get("linear_probe"),
        feature_std=ev.get("feature_std"),
        effective_rank=ev.get("effective_rank"),
        val_loss=ev.get("val_loss"),
        feature_variance=ev.get("feature_variance"),
        contrastive_accuracy=ev.get("contrastive_accuracy"),
    )


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
    """What the events (and samples) fed so far say; see the module docstring."""

    started: dict[str, Any] | None = None  # newest ``started`` event
    steps: tuple[StepPoint, ...] = ()
    epochs: tuple[dict[str, Any], ...] = ()  # epoch_end events (+ "attempt")
    evals: tuple[dict[str, Any], ...] = ()  # eval events (+ "attempt")
    checkpoints: tuple[dict[str, Any], ...] = ()
    bests: tuple[dict[str, Any], ...] = ()  # ``best`` events, oldest first
    fatal: dict[str, Any] | None = None  # of the newest attempt, if it died
    fatals: tuple[dict[str, Any], ...] = ()  # every fatal event (+ "attempt")
    finished: dict[str, Any] | None = None  # of the newest attempt, if it finished
    total_epochs: int | None = None  # in force (started, control, epoch_end)
    epoch: int | None = None  # epoch in progress (or last seen)
    step: int | None = None
    epochs_done: int | None = None
    phase: str | None = None
    progress_ts: float | None = None
    progress_mono: float | None = None
    step_s: float | None = None
    last_heartbeat_ts: float | None = None
    last_event_ts: float | None = None
    epoch_end_ts: float | None = None
    epoch_seconds: tuple[float, ...] = ()
    eval_seconds: tuple[float, ...] = ()
    checkpoint_seconds: tuple[float, ...] = ()
    device_mem: dict[str, int] = field(default_factory=dict)
    device_mem_now: int | None = None
    device_mem_peak: int | None = None
    device_total: int | None = None  # the device's own memory, as the worker reports it
    device_series: tuple[tuple[float, int], ...] = ()  # (ts, largest device_mem reading)
    samples: tuple[dict[str, Any], ...] = ()
    sample_peaks: dict[str, int] = field(default_factory=dict)
    swap_first: int | None = None
    health: tuple[dict[str, Any], ...] = ()  # ``health`` events of the newest attempt
    pictures: tuple[dict[str, Any], ...] = ()  # ``pictures`` events (+ "attempt"), oldest first

    @property
    def last_step(self) -> StepPoint | None:
        return self.steps[-1] if self.steps else None

    @property
    def last_eval(self) -> dict[str, Any] | None:
        return self.evals[-1] if self.evals else None

    @property
    def last_sample(self) -> dict[str, Any] | None:
        return self.samples[-1] if self.samples else None

    def recent_epoch_seconds(self) -> float | None:
        """Mean training seconds of the newest epochs (``policy.forecast.recent_train_s``)."""
        recent = self.epochs[-forecast.RECENT :]
        return forecast.recent_train_s(
            [float(e["seconds"]) for e in recent if num(e.get("seconds")) is not None]
        )


class RunFold:
    """Folds the events and samples of one or more attempts (fed in index order)."""

    def __init__(self, history: int | None = None) -> None:
        self._steps: deque[StepPoint] = deque(maxlen=history)
        self._samples: deque[dict[str, Any]] = deque(maxlen=history)
        self._ckpts: deque[dict[str, Any]] = deque(maxlen=history)
        self._dev: deque[tuple[float, int]] = deque(maxlen=history)
        self._lists: dict[str, list[Any]] = {
            k: []
            for k in (
                "epochs",
                "evals",
                "bests",
                "fatals",
                "epoch_seconds",
                "eval_seconds",
                "checkpoint_seconds",
                "health",
                "pictures",
            )
        }
        self._v: dict[str, Any] = {"sample_peaks": {}}

    def feed(
        self, attempt: int, events: Iterable[dict[str, Any]], read_mono: float | None = None
    ) -> None:
        """Fold events of ``attempt``; ``read_mono``: the reader's monotonic time (counts for
        events that carry no ``mono``)."""
        for ev in events:
            self._one(attempt, ev, read_mono)

    def _one(self, attempt: int, ev: dict[str, Any], read_mono: float | None) -> None:
        v, lists = self._v, self._lists
        kind, ts = ev.get("type"), num(ev.get("ts"))
        mono = num(ev.get("mono"))
        mono = mono if mono is not None else read_mono
        v["last_event_ts"] = ts
        if kind in PROGRESS_EVENTS:
            self._progress(ts, mono)
        if num(ev.get("step_s")) is not None:
            v["step_s"] = float(ev["step_s"])
        self._memory(ev, ts)
        if kind in ("started", "heartbeat", "step", "epoch_end", "eval", "resumed"):
            if isinstance(ev.get("epoch"), int):
                v["epoch"] = ev["epoch"]
            if isinstance(ev.get("step"), int):
                v["step"] = ev["step"]
        if kind == "started":
            v.update(started=ev, fatal=None, finished=None, phase="startup", last_heartbeat_ts=ts)
            lists["health"] = []  # health is judged per worker process (policy/health.py)
            v["total_epochs"] = ev.get("epochs", v.get("total_epochs"))
            start_epoch = ev.get("start_epoch")
            v["epoch"] = start_epoch if isinstance(start_epoch, int) else v.get("epoch")
            if isinstance(start_epoch, int) and start_epoch > 1:
                v["epochs_done"] = start_epoch - 1
            if isinstance(ev.get("start_step"), int):
                v["step"] = ev["start_step"]
        elif kind == "heartbeat":
            v.update(phase=ev.get("phase", v.get("phase")), last_heartbeat_ts=ts)
            lag = num(ev.get("progress_age_s")) or 0.0
            self._progress(None if ts is None else ts - lag, None if mono is None else mono - lag)
        elif kind == "step":
            v.update(phase="train", last_heartbeat_ts=ts)
            if num(ev.get("loss")) is not None:
                self._steps.append(
                    StepPoint(
                        ts or 0.0,
                        attempt,
                        int(ev.get("epoch") or 0),
                        int(ev.get("step") or 0),
                        float(ev["loss"]),
                        tuple(x for x in ev.get("loss_levels") or [] if num(x) is not None),
                        num(ev.get("grad_norm")),
                        num(ev.get("lr")),
                        num(ev.get("img_per_s")),
                    )
                )
        elif kind == "epoch_end":
            lists["epochs"].append({**ev, "attempt": attempt})
            lists["epoch_seconds"].append(num(ev.get("seconds")) or 0.0)
            v.update(epochs_done=ev.get("epoch"), epoch_end_ts=ts)
            v["total_epochs"] = ev.get("total_epochs", v.get("total_epochs"))
        elif kind == "eval":
            lists["evals"].append({**ev, "attempt": attempt})
            if (num(ev.get("epoch")) or 0) > 0:
                lists["eval_seconds"].append(num(ev.get("seconds")) or 0.0)
        elif kind == "checkpoint":
            self._ckpts.append({**ev, "attempt": attempt})
            lists["checkpoint_seconds"].append(num(ev.get("seconds")) or 0.0)
        elif kind == "best":
            lists["bests"].append({**ev, "attempt": attempt})
        elif kind == "health":
            lists["health"].append({**ev, "attempt": attempt})
        elif kind == "pictures":
            lists["pictures"].append({**ev, "attempt": attempt})
        elif kind == "control" and isinstance(ev.get("epochs"), int) and ev["epochs"]:
            v["total_epochs"] = ev["epochs"]
        elif kind == "fatal":  # the first one: with several ranks, the others follow from it
            fatal = {**ev, "attempt": attempt}
            v["fatal"] = v.get("fatal") or fatal
            lists["fatals"].append(fatal)
        elif kind == "finished":
            v["finished"] = {**ev, "attempt": attempt}

    def cut_epochs(self, total: int) -> None:
        """A live epoch cut the supervisor sent through the control file: in force at once,
        before the worker's ``control`` event echoes it."""
        self._v["total_epochs"] = total

    def _progress(self, ts: float | None, mono: float | None) -> None:
        v = self._v
        if ts is not None:
            v["progress_ts"] = max(v.get("progress_ts") or ts, ts)
        if mono is not None:
            v["progress_mono"] = max(v.get("progress_mono") or mono, mono)

    def _memory(self, ev: dict[str, Any], ts: float | None) -> None:
        mem = ev.get("device_mem") if isinstance(ev.get("device_mem"), dict) else None
        if not mem:
            return
        v = self._v
        v["device_mem"] = dict(mem)
        v["device_total"] = mem_total(mem) or v.get("device_total")
        peak = mem_value(mem)
        if peak is None:
            return
        v["device_mem_now"] = peak
        v["device_mem_peak"] = max(peak, v.get("device_mem_peak") or 0)
        if ts is not None:
            self._dev.append((ts, peak))

    def feed_samples(self, samples: Iterable[dict[str, Any]]) -> None:
        peaks = self._v["sample_peaks"]
        for s in samples:
            self._samples.append(s)
            for key in ("worker_rss", "tree_rss", "tree_mem", "gpu_used", "gpu_total", "swap_used"):
                if num(s.get(key)) is not None:
                    peaks[key] = max(int(s[key]), peaks.get(key, 0))
            if s.get("gpu_whole_card") is True:  # NVML could not tell the tree's own usage
                peaks["gpu_whole_card"] = 1
            avail = num(s.get("sys_available"))
            if avail is not None:
                peaks["sys_available_min"] = min(int(avail), peaks.get("sys_available_min", 2**62))
            if self._v.get("swap_first") is None and num(s.get("swap_used")) is not None:
                self._v["swap_first"] = int(s["swap_used"])

    def view(self) -> RunView:
        v, lists = self._v, self._lists
        return RunView(
            started=v.get("started"),
            steps=tuple(self._steps),
            epochs=tuple(lists["epochs"]),
            evals=tuple(lists["evals"]),
            checkpoints=tuple(self._ckpts),
            bests=tuple(lists["bests"]),
            fatal=v.get("fatal"),
            fatals=tuple(lists["fatals"]),
            finished=v.get("finished"),
            total_epochs=v.get("total_epochs"),
            epoch=v.get("epoch"),
            step=v.get("step"),
            epochs_done=v.get("epochs_done"),
            phase=v.get("phase"),
            progress_ts=v.get("progress_ts"),
            progress_mono=v.get("progress_mono"),
            step_s=v.get("step_s"),
            last_heartbeat_ts=v.get("last_heartbeat_ts"),
            last_event_ts=v.get("last_event_ts"),
            epoch_end_ts=v.get("epoch_end_ts"),
            epoch_seconds=tuple(lists["epoch_seconds"]),
            eval_seconds=tuple(lists["eval_seconds"]),
            checkpoint_seconds=tuple(lists["checkpoint_seconds"]),
            device_mem=dict(v.get("device_mem") or {}),
            device_mem_now=v.get("device_mem_now"),
            device_mem_peak=v.get("device_mem_peak"),
            device_total=v.get("device_total"),
            device_series=tuple(self._dev),
            samples=tuple(self._samples),
            sample_peaks=dict(v["sample_peaks"]),
            swap_first=v.get("swap_first"),
            health=tuple(lists["health"]),
            pictures=tuple(lists["pictures"]),
        )


def parse_sample(line: str) -> dict[str, Any] | None:
    """One ``samples.jsonl`` line → dict with a numeric ``ts``, or None (bad lines skipped)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and num(obj.get("ts")) is not None else None


def sample_tail(path: Path) -> EventTail:
    """Incremental reader of ``samples.jsonl``."""
    return EventTail(path, parse=parse_sample)


def fold_run_dir(run_dir: str | Path, attempt: int = 1) -> RunView:
    """Every event of one attempt's run dir, read once."""
    fold = RunFold()
    fold.feed(attempt, read_events(Path(run_dir) / EVENTS_FILE))
    return fold.view()
