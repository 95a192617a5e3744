"""How the supervisor reaches a live worker: signals and the control file.

:class:`ControlChannel` is an object the worker holds from its start (the signal handlers
are installed before setup). A stop (signal or control file)
checkpoints at the next agreed step boundary and exits ``EXIT_STOPPED``. The control file
(``RUN_DIR/control.json``, ``trainer.events.Control``) is polled at step boundaries: one
``os.stat`` per poll, read only when its mtime changed, acted on once per ``seq``. ``epochs``
cuts the schedule at the current progress (never below the epoch in progress); ``stop`` (with
``final_eval``) stops like a signal. A ``control`` event says what was applied.

A signal handler only records what reached THIS process (``signal_seen``); the loop acts on
``stop_flag``, which only an agreement sets. Alone, the agreement is the process's own: the
control file and ``signal_seen`` are read at step boundaries (:meth:`ControlChannel.poll_alone`).
With several ranks (``trainer.runtime.dist``) every rank must act at the same step, so nothing a
rank sees alone is acted on where it is seen: before each step the writer reads the control file,
every rank adds whether a signal reached it and whether its checkpoint timer is due
(:meth:`ControlChannel.sync_out`); the numbers ride in the step's all-reduce, and every rank
applies the same sums when it reads that step (:meth:`ControlChannel.sync_in`): a cut at the
same progress, a stop at the same step, a time checkpoint at the same step.
:meth:`ControlChannel.sync_control` does the same at an epoch boundary with an all-reduce of its
own. The points where a rank reads a step are themselves fixed by agreed facts only (the config,
the step number, agreed decisions), so every rank reads every agreement at the same place.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch

from trainer.events import CONTROL_FILE, Control, ControlApplied, read_control
from trainer.runtime.dist import Dist
from trainer.runtime.emitter import Emitter
from trainer.train.state import TrainState


class ControlChannel:
    """Signals and the control file. Owns what reached this process (``signal_seen``), the
    agreed decisions (``stop_flag``, ``final_eval_on_stop``, ``save_agreed``) and what of the
    control file was read (``control_seq``); a cut moves the :class:`TrainState` it is given."""

    def __init__(self, run_dir: Path, dist: Dist, ev: Emitter) -> None:
        self.run_dir, self.dist, self.ev = run_dir, dist, ev
        self.signal_seen: str | None = None  # set by the signal handlers: this process only
        self.stop_flag: str | None = None  # an agreed stop (a signal or the control file)
        self.save_agreed = False  # several ranks: a time checkpoint agreed in the last step
        self.final_eval_on_stop = False
        self.control_seq = -1
        self._control_mtime = 0

    def on_signal(self, signum: int, _frame: Any) -> None:
        """Only a flag: acted on through the agreement (alone: the next ``poll_alone``)."""
        self.signal_seen = signal.Signals(signum).name

    def poll_alone(self, state: TrainState) -> None:
        """One process: the control file and a signal, applied at this step boundary."""
        ctl = self.read_new_control()
        if ctl is not None:
            self.apply_control(ctl, state)
        if self.signal_seen and not self.stop_flag:
            self.stop_flag = self.signal_seen

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

    # -- several ranks: [signalled, seq, epochs, stop, final_eval, save_due], summed ----------
    def sync_out(self, timer_due: bool) -> list[float]:
        """This rank's part of the next agreement (the writer alone reads the control file)."""
        ctl = self.read_new_control() if self.dist.main else None
        out = [1.0 if self.signal_seen else 0.0, 0.0, 0.0, 0.0, 0.0]
        if ctl is not None:
            out[1:] = [
                float(ctl.seq),
                float(ctl.epochs or 0),
                float(ctl.stop),
                float(ctl.final_eval),
            ]
        return [*out, 1.0 if timer_due else 0.0]

    def sync_in(self, agreed: list[float], state: TrainState) -> None:
        """Apply an agreement (the same sums on every rank): the writer's control, a stop when
        a signal reached any rank, a time checkpoint when any rank's timer is due."""
        signalled, seq, epochs, stop, final_eval, due = (round(x) for x in agreed)
        if seq > max(self.control_seq, 0):  # 0: rank 0 read nothing new
            ctl = Control(
                seq=seq, epochs=epochs or None, stop=bool(stop), final_eval=bool(final_eval)
            )
            self.apply_control(ctl, state)
        if signalled and not self.stop_flag:
            self.stop_flag = self.signal_seen or "peer"  # peer: it reached another rank
        self.save_agreed = due > 0

    def sync_control(self, state: TrainState, device: torch.device, timer_due: bool) -> None:
        """At a boundary outside a step: poll alone, agree with an all-reduce of its own."""
        if self.dist.world <= 1:
            self.poll_alone(state)
            return
        out = torch.tensor(self.sync_out(timer_due), dtype=torch.float32, device=device)
        self.sync_in(self.dist.sum_(out).cpu().tolist(), state)

    def saved(self) -> None:
        """A checkpoint was written: an agreed time checkpoint is spent."""
        self.save_agreed = False

    def apply_control(self, ctl: Control, state: TrainState) -> None:
        self.control_seq = ctl.seq
        applied = []
        if ctl.epochs is not None:
            floor = state.epoch  # never below the epoch in progress
            new_total = max(ctl.epochs, floor)
            if new_total != state.total_epochs:
                state.cut(new_total)
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
