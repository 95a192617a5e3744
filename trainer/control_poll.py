"""How the supervisor reaches a live worker: signals and the control file.

Part of :class:`trainer.loop.Worker` (a base class of it). Signal handlers only set
``stop_flag``; the loop checkpoints at the next step boundary and exits ``EXIT_STOPPED``. The
control file (``RUN_DIR/control.json``, ``trainer.events.Control``) is polled at step
boundaries: one ``os.stat`` per poll, read only when its mtime changed, acted on once per
``seq``. ``epochs`` cuts the schedule at the current progress (never below the epoch in
progress); ``stop`` (with ``final_eval``) stops like a signal. A ``control`` event says what was
applied.

With several ranks (``trainer.dist``) every rank must act at the same step: rank 0 reads the
control file before each step (:meth:`ControlPolling.sync_out`), every rank adds whether a
signal reached it, the numbers ride in the step's all-reduce, and every rank applies the same
result after it (:meth:`ControlPolling.sync_in`); :meth:`ControlPolling.sync_control` does the
same at an epoch boundary with an all-reduce of its own.
"""

from __future__ import annotations

import signal
from typing import Any

import torch

from trainer.events import CONTROL_FILE, Control, ControlApplied, read_control


class ControlPolling:
    """Signals and control-file polling for the Worker (uses and sets its ``stop_flag``,
    ``final_eval_on_stop``, ``control_seq``, ``_control_mtime``, ``schedule``; reads ``dist``,
    ``device``)."""

    def on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_flag = signal.Signals(signum).name

    def poll_control(self) -> None:
        ctl = self.read_new_control()
        if ctl is not None:
            self.apply_control(ctl)

    def read_new_control(self) -> Control | None:
        """The control file's content when it changed and holds a new ``seq``, else None."""
        path = self.run_dir / CONTROL_FILE
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if mtime == self._control_mtime:
            return None
        self._control_mtime = mtime
        ctl = read_control(self.run_dir)
        if ctl is None or ctl.seq <= self.control_seq:
            return None
        return ctl

    # -- several ranks: [signalled, seq, epochs, stop, final_eval], summed over ranks --------
    def sync_out(self) -> list[float]:
        ctl = self.read_new_control() if self.dist.main else None
        out = [1.0 if self.stop_flag else 0.0, 0.0, 0.0, 0.0, 0.0]
        if ctl is not None:
            out[1:] = [
                float(ctl.seq),
                float(ctl.epochs or 0),
                float(ctl.stop),
                float(ctl.final_eval),
            ]
        return out

    def sync_in(self, agreed: list[float]) -> None:
        signalled, seq, epochs, stop, final_eval = (round(x) for x in agreed)
        if seq > max(self.control_seq, 0):  # 0: rank 0 read nothing new
            ctl = Control(
                seq=seq, epochs=epochs or None, stop=bool(stop), final_eval=bool(final_eval)
            )
            self.apply_control(ctl)
        if signalled and not self.stop_flag:
            self.stop_flag = "peer"  # a signal reached another rank: stop together

    def sync_control(self) -> None:
        """At a boundary outside a step: poll alone, agree with an all-reduce of its own."""
        if self.dist.world <= 1:
            self.poll_control()
            return
        t = self.dist.sum_(torch.tensor(self.sync_out(), dtype=torch.float32, device=self.device))
        self.sync_in(t.cpu().tolist())

    def apply_control(self, ctl: Control) -> None:
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
