"""How the supervisor reaches a live worker: signals and the control file.

Part of :class:`trainer.loop.Worker` (a base class of it). Signal handlers only set
``stop_flag``; the loop checkpoints at the next step boundary and exits ``EXIT_STOPPED``. The
control file (``RUN_DIR/control.json``, ``trainer.events.Control``) is polled at step
boundaries: one ``os.stat`` per poll, read only when its mtime changed, acted on once per
``seq``. ``epochs`` cuts the schedule at the current progress (never below the epoch in
progress); ``stop`` (with ``final_eval``) stops like a signal. A ``control`` event says what was
applied.
"""

from __future__ import annotations

import signal
from typing import Any

from trainer.events import CONTROL_FILE, ControlApplied, read_control


class ControlPolling:
    """Signals and control-file polling for the Worker (uses and sets its ``stop_flag``,
    ``final_eval_on_stop``, ``control_seq``, ``_control_mtime``, ``schedule``)."""

    def on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_flag = signal.Signals(signum).name

    def poll_control(self) -> None:
        path = self.run_dir / CONTROL_FILE
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._control_mtime:
            return
        self._control_mtime = mtime
        ctl = read_control(self.run_dir)
        if ctl is None or ctl.seq <= self.control_seq:
            return
        self.control_seq = ctl.seq
        applied = []
        if ctl.epochs is not None:
            floor = self.epoch  # never below the epoch in progress
            new_total = max(ctl.epochs, floor)
            if new_total != self.total_epochs:
                self.schedule = self.schedule.with_cut(self.progress(), new_total)
            floored = " (floored)" if new_total != ctl.epochs else ""
            applied.append(f"epochs → {new_total}{floored}")
        if ctl.stop:
            self.stop_flag = "control"
            self.final_eval_on_stop = ctl.final_eval
            applied.append("stop" + (" after final eval" if ctl.final_eval else ""))
        self.ev.emit(
            ControlApplied(
                seq=ctl.seq, epochs=ctl.epochs, stop=ctl.stop, applied=", ".join(applied)
            )
        )
