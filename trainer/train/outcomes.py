"""What happens to a step once its numbers arrive: the worker's :class:`StepOutcomes`.

The loop launches step N+1 before it reads step N (``TrainStep.launch``), so what a step
meant — applied, skipped for a gradient overflow, or a non-finite loss — is handled here, one
step late and in step order (:meth:`StepOutcomes.settle`). Contracts:

- A batch whose gradients overflow (loss finite) is a SKIPPED step: it consumed its batch but
  not a step number (``step`` counts optimizer steps taken). It is counted in ``step`` events
  (``overflow_steps``, cumulative this attempt; ``loss_scale``); more than
  ``training.max_consecutive_overflows`` in a row, or a non-finite loss, is fatal
  ``nonfinite``. The bad step itself changed nothing (skipped on the device, trainer.train.step).
- ``step`` events every ``logging.log_frequency`` steps (and step 1), img/s over the steps
  since the last one; ``step_s``: the median of the last 20 step durations.
- With several ranks each outcome carries the decisions agreed in that step's all-reduce
  (``ControlChannel.sync_in``).
- A step-addressed fault (a test aid) settles the step in flight first, so it fires at its
  exact step number (``FaultInjector.near``).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainer.config import Config
from trainer.events import Step
from trainer.runtime.dist import Dist
from trainer.runtime.emitter import Emitter
from trainer.train.control import ControlChannel
from trainer.train.health import HealthMonitor
from trainer.train.state import TrainState
from trainer.train.step import NonFiniteLossError, PendingStep, StepResult, TrainStep


@dataclass
class InFlight:
    """A launched step whose numbers have not been read yet, with the LR and EMA momentum it
    ran at."""

    pending: PendingStep
    lr: float
    momentum: float


class StepOutcomes:
    """Reads launched steps and acts on what they meant. Owns the steps in flight, the
    epoch's losses, the step timings, the overflow counters (this attempt) and the
    ``step`` event's img/s window; moves ``step`` of the :class:`TrainState` it is given and
    hands each step's agreement to the :class:`ControlChannel`."""

    def __init__(
        self,
        cfg: Config,
        state: TrainState,
        step_fn: TrainStep,
        model: Any,
        health: HealthMonitor,
        ev: Emitter,
        dist: Dist,
        control: ControlChannel,
        memory: Callable[[], dict[str, int]],
    ) -> None:
        self.cfg, self.state, self.step_fn, self.model = cfg, state, step_fn, model
        self.health, self.ev, self.dist, self.control = health, ev, dist, control
        self.memory = memory
        self.in_flight: list[InFlight] = []
        self.epoch_losses: list[float] = []
        self.overflow_steps = 0  # skipped for gradient overflow, this attempt
        self.overflow_run = 0  # consecutive ones
        self.step_times: deque[float] = deque(maxlen=20)
        self.t_log, self.n_log = time.monotonic(), 0

    def start_epoch(self) -> None:
        """A new epoch: no losses yet, the img/s window restarts."""
        self.epoch_losses = []
        self.in_flight = []
        self.t_log, self.n_log = time.monotonic(), 0

    def launched(self, pending: PendingStep, lr: float, momentum: float, seconds: float) -> None:
        """A step is in flight; ``seconds`` from its data wait to its launch returning."""
        self.in_flight.append(InFlight(pending, lr, momentum))
        self.step_times.append(seconds)

    def settle(self) -> bool:
        """Read and handle every step in flight, oldest first; True when the last one handled
        was applied (False: skipped, or nothing was in flight)."""
        applied = False
        while self.in_flight:
            item = self.in_flight.pop(0)
            applied = self.handle(item.pending.result(), item.lr, item.momentum)
        return applied

    def handle(self, res: StepResult, lr: float, momentum: float) -> bool:
        """One step's outcome, in step order: a non-finite loss stops the run (the bad step
        itself changed nothing); an overflow is counted (too many in a row stop it);
        otherwise the step counts, and is logged every ``logging.log_frequency`` steps."""
        st = self.state
        nxt = st.step + 1
        if not res.finite:
            raise NonFiniteLossError(
                f"non-finite loss at step {nxt} (loss={res.loss}, grad_norm={res.grad_norm}); "
                "optimizer step skipped"
            )
        if res.overflow:
            self.on_overflow(nxt, res.grad_norm)
        else:
            self.overflow_run = 0
            st.step = nxt
            self.epoch_losses.append(res.loss)
            self.health.after_step(st.epoch, st.step, res.loss, self.model)
            self.n_log += st.eff
            self.ev.progress(epoch=st.epoch, step=st.step)
            if nxt == 1 or nxt % self.cfg.logging.log_frequency == 0:
                dt = max(time.monotonic() - self.t_log, 1e-9)
                self.emit_step(res, lr, self.n_log / dt, momentum)
                self.t_log, self.n_log = time.monotonic(), 0
        if self.dist.world > 1:
            self.control.sync_in(res.extra, st)  # decisions agreed in this step's all-reduce
        return not res.overflow

    def step_s(self) -> float | None:
        """Recent seconds per step: the median of the last 20 (data wait included)."""
        return round(statistics.median(self.step_times), 4) if self.step_times else None

    def on_overflow(self, nxt: int, grad_norm: float) -> None:
        """A skipped step (finite loss, non-finite gradients): counted; too many in a row is
        fatal."""
        self.overflow_steps += 1
        self.overflow_run += 1
        limit = self.cfg.training.max_consecutive_overflows
        if self.overflow_run > limit:
            raise NonFiniteLossError(
                f"{self.overflow_run} consecutive gradient overflows at step {nxt} "
                f"(grad_norm={grad_norm}, loss finite) > training.max_consecutive_overflows="
                f"{limit}; {self.overflow_steps} overflow step(s) skipped this attempt"
            )

    def emit_step(self, res: Any, lr: float, img_per_s: float, momentum: float) -> None:
        event = Step(
            epoch=self.state.epoch,
            step=self.state.step,
            loss=res.loss,
            loss_levels=res.levels,
            loss_parts=res.parts,
            grad_norm=res.grad_norm,
            lr=lr,
            ema_momentum=momentum,
            img_per_s=img_per_s,
            micro_batch=self.state.micro,
            accum_steps=self.state.accum,
            device_mem=self.memory(),
            step_s=self.step_s(),
            overflow_steps=self.overflow_steps,
            loss_scale=self.step_fn.loss_scale(),
        )
        if res.grad_norms is not None:
            event.grad_norms = res.grad_norms  # type: ignore[attr-defined]
        self.ev.emit(event)
