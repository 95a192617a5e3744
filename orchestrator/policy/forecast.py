"""When will training finish? Pure arithmetic on measured epoch, eval and checkpoint times.

    per = epoch_cost(epoch_seconds=[61.0, 58.2], eval_seconds=[9.5], checkpoint_seconds=[1.1],
                     epochs_done=2)
    end = projected_training_end(anchor=last_epoch_end_ts, epochs_done=2, total_epochs=10,
                                 per_epoch_s=per)
    n = epochs_that_fit(anchor, epochs_done=2, per_epoch_s=per, limit=deadline - reserve_s)

Model: an epoch costs the mean of its most recent ``RECENT`` measured training times (the first
epoch is dropped once there are later ones: it carries warm-up), plus the evaluation and
checkpoint time measured so far spread over the epochs done. The projection is anchored at the
newest ``epoch_end`` (not at "now"), so it does not drift within an epoch. The projected
finish (:func:`finish`) is the training end plus one final evaluation: the mean measured eval,
or the runbook's final-eval reserve before any was measured. The night runner records it at
every ``epoch_end``, the status screen shows that record (or, before the first one, the same
function on what it has folded), and the policy cuts epochs on the same epoch cost — one model.
The forecast error is projected minus actual finish (positive: finished early).

Before a night runs, preflight plans it on the same costs (:func:`planned_night_s`: probed step
time, estimated evaluation and checkpoint time). :func:`pace_needed` is the one "pace needed":
seconds per remaining epoch that still end in time, from ``now`` (the screen) or from the
window's start (the report's planned pace).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

RECENT = 3


def recent_train_s(epoch_seconds: Sequence[float], n: int = RECENT) -> float | None:
    """Mean training seconds of the newest ``n`` epochs (evaluation and checkpoints not
    included): what the screen and the report show as the epoch's training time.
    :func:`epoch_cost` starts from the same window, drops a warm-up first epoch and adds the
    evaluation and checkpoint time per epoch; None before an epoch was measured."""
    recent = list(epoch_seconds)[-n:]
    return statistics.fmean(recent) if recent else None


def epoch_cost(
    epoch_seconds: Sequence[float],
    eval_seconds: Sequence[float] = (),
    checkpoint_seconds: Sequence[float] = (),
    epochs_done: int = 0,
) -> float | None:
    """Projected wall seconds per remaining epoch, or None before any epoch was measured."""
    if not epoch_seconds:
        return None
    times = list(epoch_seconds)
    if len(times) > 1:
        times = times[1:]
    recent = times[-RECENT:]
    train = sum(recent) / len(recent)
    spread = max(epochs_done, len(epoch_seconds), 1)
    overhead = (sum(eval_seconds) + sum(checkpoint_seconds)) / spread
    return train + overhead


def projected_training_end(
    anchor: float, epochs_done: int, total_epochs: int, per_epoch_s: float
) -> float:
    """Unix time the last epoch ends, given the newest epoch_end at ``anchor``."""
    return anchor + max(total_epochs - epochs_done, 0) * per_epoch_s


def projected_finish(
    anchor: float,
    epochs_done: int,
    total_epochs: int,
    per_epoch_s: float,
    final_eval_s: float = 0.0,
) -> float:
    """Training end plus the final evaluation: when the worker's ``finished`` should come."""
    return projected_training_end(anchor, epochs_done, total_epochs, per_epoch_s) + final_eval_s


def finish(
    epoch_seconds: Sequence[float],
    eval_seconds: Sequence[float],
    checkpoint_seconds: Sequence[float],
    epoch_end_ts: float | None,
    epochs_done: int,
    total_epochs: int,
    final_eval_reserve_s: float,
) -> float | None:
    """Projected finish (training end + one final evaluation), or None before an epoch ended.
    ``epoch_seconds`` etc. are one attempt's (or a night's) measured times, oldest first."""
    per = epoch_cost(epoch_seconds, eval_seconds, checkpoint_seconds, len(epoch_seconds))
    if per is None or epoch_end_ts is None:
        return None
    final_eval = sum(eval_seconds) / len(eval_seconds) if eval_seconds else final_eval_reserve_s
    return projected_finish(epoch_end_ts, epochs_done, total_epochs, per, final_eval)


def pace_needed(
    deadline: float, final_eval_reserve_s: float, now: float, epochs_done: int, total_epochs: int
) -> float | None:
    """Seconds per remaining epoch that still end in time; None when nothing is left or the
    time already ran out."""
    if total_epochs <= epochs_done:
        return None
    budget = deadline - final_eval_reserve_s - now
    return budget / (total_epochs - epochs_done) if budget > 0 else None


def planned_night_s(
    epochs: int,
    epoch_s: float,
    eval_s: float,
    eval_every: int,
    checkpoint_s: float,
    final_eval_s: float,
) -> float:
    """A night planned before it runs (preflight), on the same costs the live forecast measures:
    every epoch trains and checkpoints, an evaluation runs before training (the random-encoder
    baseline) and every ``eval_every`` epochs, then the final evaluation."""
    evals = 1 + epochs // max(1, eval_every)
    return epochs * (epoch_s + checkpoint_s) + evals * eval_s + final_eval_s


def epochs_that_fit(anchor: float, epochs_done: int, per_epoch_s: float, limit: float) -> int:
    """The largest total epoch count whose training ends by ``limit`` (at least epochs_done)."""
    if per_epoch_s <= 0:
        return 10**9
    more = math.floor((limit - anchor) / per_epoch_s)
    return epochs_done + max(more, 0)


def forecast_errors(projections: Sequence[float], actual_finish: float) -> list[float]:
    """Projected minus actual finish, seconds, one per projection (first one first)."""
    return [round(p - actual_finish, 1) for p in projections]
