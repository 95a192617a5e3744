"""What happens to a step once its numbers arrive: the Worker's step outcomes.

The loop launches step N+1 before it reads step N (``TrainStep.launch``), so what a step
meant — applied, skipped for a gradient overflow, or a non-finite loss — is handled here, one
step late and in step order (:meth:`StepOutcomes.settle`). Contracts:

- A batch whose gradients overflow (loss finite) is a SKIPPED step: it consumed its batch but
  not a step number (``step`` counts optimizer steps taken). It is counted in ``step`` events
  (``overflow_steps``, cumulative this attempt; ``loss_scale``); more than
  ``training.max_consecutive_overflows`` in a row, or a non-finite loss, is fatal
  ``nonfinite``. The bad step itself changed nothing (skipped on the device, trainer.step).
- ``step`` events every ``logging.log_frequency`` steps (and step 1), img/s over the steps
  since the last one; ``step_s``: the median of the last 20 step durations.
- With several ranks each outcome carries the decisions agreed in that step's all-reduce
  (``ControlPolling.sync_in``).
- A step-addressed fault (a test aid) settles the step in flight first, so it fires at its
  exact step number (:meth:`StepOutcomes.fault_near`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from trainer.events import Step
from trainer.step import NonFiniteLossError, PendingStep, StepResult


@dataclass
class InFlight:
    """A launched step whose numbers have not been read yet, with the LR and EMA momentum it
    ran at."""

    pending: PendingStep
    lr: float
    momentum: float


class StepOutcomes:
    """Mixin for the Worker (uses its ``cfg``, ``step``, ``epoch``, ``eff``, ``micro``,
    ``accum``, ``dist``, ``ev``, ``step_fn``, ``step_times``, overflow counters, and keeps
    ``in_flight``, ``epoch_losses``, ``t_log``, ``n_log``)."""

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
        nxt = self.step + 1
        if not res.finite:
            raise NonFiniteLossError(
                f"non-finite loss at step {nxt} (loss={res.loss}, grad_norm={res.grad_norm}); "
                "optimizer step skipped"
            )
        if res.overflow:
            self.on_overflow(nxt, res.grad_norm)
        else:
            self.overflow_run = 0
            self.step = nxt
            self.epoch_losses.append(res.loss)
            self.health.after_step(self.epoch, self.step, res.loss, self.model)
            self.n_log += self.eff
            self.ev.progress(epoch=self.epoch, step=self.step)
            if nxt == 1 or nxt % self.cfg.logging.log_frequency == 0:
                dt = max(time.monotonic() - self.t_log, 1e-9)
                self.emit_step(res, lr, self.n_log / dt, momentum)
                self.t_log, self.n_log = time.monotonic(), 0
        if self.dist.world > 1:
            self.sync_in(res.extra)  # decisions agreed in this step's all-reduce
        return not res.overflow

    def fault_near(self, nxt: int) -> bool:
        """A step-addressed fault (a test aid) could fire at this launch: its number must be
        exact, so the step in flight is settled first."""
        f = self.cfg.faults
        aimed = (
            f.sigkill_at_step,
            f.oom_at_step,
            f.nonfinite_at_step,
            f.grad_overflow_at_step,
            f.hang_at_step,
            f.raise_in_feature_after_step,
            f.collapse_at_step,
            f.diverge_at_step,
        )
        return any(a is not None and a in (nxt - 1, nxt) for a in aimed)

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
            epoch=self.epoch,
            step=self.step,
            loss=res.loss,
            loss_levels=res.levels,
            loss_parts=res.parts,
            grad_norm=res.grad_norm,
            lr=lr,
            ema_momentum=momentum,
            img_per_s=img_per_s,
            micro_batch=self.micro,
            accum_steps=self.accum,
            device_mem=self.mem(),
            step_s=self.step_s(),
            overflow_steps=self.overflow_steps,
            loss_scale=self.step_fn.loss_scale(),
        )
        if res.grad_norms is not None:
            event.grad_norms = res.grad_norms  # type: ignore[attr-defined]
        self.ev.emit(event)
