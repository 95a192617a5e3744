"""Schedules as pure functions of training progress, with epoch cuts that keep them continuous.

Progress ``e`` is measured in epochs done (a float: samples seen / epoch size), so resume needs
no replay and a change of micro-batch or effective batch keeps the curve continuous.

The base curves are laid out over ``base_epochs``:

- LR: linear warm-up from ``lr × warmup_lr_ratio`` to ``lr`` over ``warmup_epochs``, then
  cosine down to ``lr × min_lr_ratio`` at the end;
- EMA: target-encoder momentum held at ``ema_start`` for ``ema_hold_epochs``, then linear to
  ``ema_end`` at the end.

An epoch cut is a :class:`Cut` ``(at, total)``: made at progress ``at``, it changes the total in
force from the previous one (``T_prev``: the previous cut's total, or ``base_epochs``) to
``total``. Only what is left is rescaled: for ``e >= at`` the remaining span ``[at, total]`` is
mapped linearly onto the old remaining span ``[at, T_prev]``::

    e' = at + (e - at) · (T_prev - at) / (total - at)

so the curves are continuous at ``at`` (nothing before it changes) and end at their floor at
the new total. Cuts compose: the newest cut maps ``e`` into the previous curve's progress, the
cut before it maps that further, down to the base curve. A cut to a total at or below its own
position (nothing left to train) maps everything past it to the old end. A cut may also raise
the total (the rest of the curve stretches). :meth:`Schedule.state` / :func:`schedule_from_state`
carry ``base_epochs`` and the cuts in a checkpoint so a resume continues the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from trainer.config import Config


@dataclass(frozen=True)
class Cut:
    at: float  # progress (epochs done) when the cut was made
    total: int  # total epochs in force from then on


@dataclass(frozen=True)
class Schedule:
    lr: float
    warmup_epochs: float
    base_epochs: int
    min_lr_ratio: float
    warmup_lr_ratio: float
    ema_start: float
    ema_end: float
    ema_hold_epochs: float
    cuts: tuple[Cut, ...] = ()

    @property
    def total_epochs(self) -> int:
        """The total in force (after every cut)."""
        return self.cuts[-1].total if self.cuts else self.base_epochs

    def base_progress(self, e: float) -> float:
        """Progress on the base curve that ``e`` (progress under the cuts in force) maps to."""
        for i in range(len(self.cuts) - 1, -1, -1):
            cut = self.cuts[i]
            if e <= cut.at:
                continue
            prev = self.cuts[i - 1].total if i > 0 else self.base_epochs
            new_span, old_span = cut.total - cut.at, prev - cut.at
            e = prev if new_span <= 0 else cut.at + (e - cut.at) * old_span / new_span
        return e

    def lr_at(self, e: float) -> float:
        return self._base_lr(self.base_progress(e))

    def ema_at(self, e: float) -> float:
        return self._base_ema(self.base_progress(e))

    def with_cut(self, at: float, total: int) -> Schedule:
        """The schedule after cutting (or raising) the total to ``total`` at progress ``at``."""
        return replace(self, cuts=(*self.cuts, Cut(float(at), int(total))))

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores (plain numbers: loads with ``weights_only``)."""
        return {
            "base_epochs": self.base_epochs,
            "total_epochs": self.total_epochs,
            "cuts": [[c.at, c.total] for c in self.cuts],
        }

    # -- base curves ---------------------------------------------------------------------------
    def _base_lr(self, e: float) -> float:
        warm = min(self.warmup_epochs, float(self.base_epochs))
        if e < warm:
            frac = e / warm
            return self.lr * (self.warmup_lr_ratio + (1.0 - self.warmup_lr_ratio) * frac)
        span = self.base_epochs - warm
        t = 1.0 if span <= 0 else min(max((e - warm) / span, 0.0), 1.0)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    def _base_ema(self, e: float) -> float:
        hold = min(self.ema_hold_epochs, float(self.base_epochs))
        if e <= hold:
            return self.ema_start
        span = self.base_epochs - hold
        t = 1.0 if span <= 0 else min((e - hold) / span, 1.0)
        return self.ema_start + (self.ema_end - self.ema_start) * t


def make_schedule(
    cfg: Config, base_epochs: int | None = None, cuts: tuple[Cut, ...] = ()
) -> Schedule:
    """The config's curves over ``base_epochs`` (default ``training.epochs``) with ``cuts``."""
    t, ema = cfg.training, cfg.model.ema
    return Schedule(
        lr=t.lr,
        warmup_epochs=float(t.warmup_epochs),
        base_epochs=base_epochs if base_epochs is not None else t.epochs,
        min_lr_ratio=t.min_lr_ratio,
        warmup_lr_ratio=t.warmup_lr_ratio,
        ema_start=ema.momentum,
        ema_end=ema.momentum_end,
        ema_hold_epochs=float(ema.momentum_warmup_epochs),
        cuts=tuple(cuts),
    )


def schedule_from_state(
    cfg: Config, state: dict[str, Any] | None, legacy_total: int | None = None
) -> Schedule:
    """The config's curves (LR, warm-up, EMA: a restart rung may have changed them) laid over
    the checkpoint's ``base_epochs`` and cuts. A checkpoint without a schedule (older format)
    gives its ``legacy_total`` as the base, no cuts."""
    if not state:
        return make_schedule(cfg, legacy_total)
    cuts = tuple(Cut(float(at), int(total)) for at, total in state.get("cuts", []))
    return make_schedule(cfg, int(state["base_epochs"]), cuts)


def should_eval(epoch: int, total_epochs: int, frequency: int) -> bool:
    return epoch == total_epochs or epoch % frequency == 0


def should_save(epoch: int, total_epochs: int, frequency: int) -> bool:
    return epoch == total_epochs or epoch % frequency == 0
