"""Schedules as pure functions of training progress.

Progress is measured in epochs done (a float: samples seen / epoch size), so resume needs no
replay, an epoch cut is a parameter change (``total_epochs``), and a change of micro-batch or
effective batch keeps the curve continuous.

- ``lr_at(e)``: linear warm-up from ``lr × warmup_lr_ratio`` to ``lr`` over ``warmup_epochs``,
  then cosine down to ``lr × min_lr_ratio`` at ``total_epochs``.
- ``ema_at(e)``: target-encoder momentum held at ``momentum`` for ``momentum_warmup_epochs``,
  then linear to ``momentum_end`` at ``total_epochs``.
- ``should_eval(epoch, ...)`` / ``should_save(epoch, ...)``: every N epochs and at the last one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from trainer.config import Config


@dataclass(frozen=True)
class Schedule:
    lr: float
    warmup_epochs: float
    total_epochs: int
    min_lr_ratio: float
    warmup_lr_ratio: float
    ema_start: float
    ema_end: float
    ema_hold_epochs: float

    def lr_at(self, e: float) -> float:
        warm = min(self.warmup_epochs, float(self.total_epochs))
        if e < warm:
            frac = e / warm
            return self.lr * (self.warmup_lr_ratio + (1.0 - self.warmup_lr_ratio) * frac)
        span = self.total_epochs - warm
        t = 1.0 if span <= 0 else min(max((e - warm) / span, 0.0), 1.0)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    def ema_at(self, e: float) -> float:
        hold = min(self.ema_hold_epochs, float(self.total_epochs))
        if e <= hold:
            return self.ema_start
        span = self.total_epochs - hold
        t = 1.0 if span <= 0 else min((e - hold) / span, 1.0)
        return self.ema_start + (self.ema_end - self.ema_start) * t

    def with_total(self, total_epochs: int) -> Schedule:
        return replace(self, total_epochs=total_epochs)


def make_schedule(cfg: Config, total_epochs: int | None = None) -> Schedule:
    t, ema = cfg.training, cfg.model.ema
    return Schedule(
        lr=t.lr,
        warmup_epochs=float(t.warmup_epochs),
        total_epochs=total_epochs if total_epochs is not None else t.epochs,
        min_lr_ratio=t.min_lr_ratio,
        warmup_lr_ratio=t.warmup_lr_ratio,
        ema_start=ema.momentum,
        ema_end=ema.momentum_end,
        ema_hold_epochs=float(ema.momentum_warmup_epochs),
    )


def should_eval(epoch: int, total_epochs: int, frequency: int) -> bool:
    return epoch == total_epochs or epoch % frequency == 0


def should_save(epoch: int, total_epochs: int, frequency: int) -> bool:
    return epoch == total_epochs or epoch % frequency == 0
