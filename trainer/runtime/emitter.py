"""Writes ``events.jsonl`` (one JSON object a line, flushed per line) and the heartbeat.

The heartbeat is a daemon thread that emits a ``heartbeat`` event every ``period`` seconds with
the current phase, epoch, step, device memory, ``step_s`` (the loop's recent seconds per step,
set by the loop; None before the first step) and ``progress_age_s`` (seconds since the main
loop last reported progress). It runs through slow phases (evaluation, checkpoint writes, data
loader start-up) so a long save is not mistaken for a hang, but it stops when the main thread
has made no progress for ``stall_s`` — a truly stuck worker falls silent and the supervisor's
heartbeat timeout fires. ``freeze()`` silences it at once (the ``hang_at_step`` fault).
Emitting never blocks training for long: a lock around one ``write`` + ``flush``. ``only``
limits what is written (ranks > 0 of a distributed run write only their ``fatal``; several
processes append to one file, one whole line per ``write``). ``sinks`` are handed every event
written (``trainer/runtime/tensorboard_log.py``); a sink that fails is ignored.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.events import Heartbeat, _Event


class Emitter:
    def __init__(
        self,
        path: str | Path,
        period: float = 5.0,
        stall_s: float = 1800.0,
        memory: Callable[[], dict[str, int]] | None = None,
        only: tuple[str, ...] | None = None,
        sinks: list[Callable[[dict[str, Any]], None]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self.period = period
        self.stall_s = stall_s
        self._memory = memory or (lambda: {})
        self.only = only  # write only these event types (ranks > 0: their fatal)
        self.sinks = list(sinks or [])  # also handed each written event (TensorBoard)
        self.phase = "startup"
        self.epoch = 0
        self.step = 0
        self.step_s: float | None = None
        self._last_progress = time.monotonic()
        self._frozen = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- events ----------------------------------------------------------------------------
    def emit(self, event: _Event | dict[str, Any]) -> None:
        obj = event.model_dump(mode="json") if isinstance(event, _Event) else event
        if self.only is not None and obj.get("type") not in self.only:
            return
        line = json.dumps(obj, separators=(",", ":"), allow_nan=True) + "\n"
        with self._lock:
            if self._fh.closed:
                return
            self._fh.write(line)
            self._fh.flush()
            for sink in self.sinks:
                with contextlib.suppress(Exception):  # a view of the events never stops training
                    sink(obj)

    # -- progress / heartbeat ----------------------------------------------------------------
    def progress(
        self, phase: str | None = None, epoch: int | None = None, step: int | None = None
    ) -> None:
        """Called by the main loop whenever it makes progress (cheap: no I/O)."""
        if phase is not None:
            self.phase = phase
        if epoch is not None:
            self.epoch = epoch
        if step is not None:
            self.step = step
        self._last_progress = time.monotonic()

    def start(self) -> None:
        if self._thread is not None:  # one heartbeat thread (the probe sets up several workers)
            return
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        age = time.monotonic() - self._last_progress
        hb = Heartbeat(
            phase=self.phase,
            epoch=self.epoch,
            step=self.step,  # type: ignore[arg-type]
            device_mem=self._memory(),
            step_s=self.step_s,
        )
        obj = hb.model_dump(mode="json")
        obj["progress_age_s"] = round(age, 2)
        self.emit(obj)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            if self._frozen:
                continue
            if time.monotonic() - self._last_progress > self.stall_s:
                continue  # stuck: fall silent so the supervisor notices
            with contextlib.suppress(Exception):  # never let the heartbeat kill the worker
                self.beat()

    def freeze(self) -> None:
        self._frozen = True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            self._fh.close()
            for sink in self.sinks:
                with contextlib.suppress(Exception):
                    getattr(sink, "close", lambda: None)()
