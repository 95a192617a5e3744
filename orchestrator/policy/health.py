"""Collapse and divergence: the worker's ``health`` points judged against the runbook. Pure.

``health_fault(points, limits)`` returns a :class:`HealthFault` or None. The points are one
attempt's ``health`` events (``trainer/train/health.py``), oldest first: the RankMe effective rank
and mean per-dimension variance of a training batch's pooled target embeddings, and the training
loss's moving average. The first ``warmup_points`` of an attempt set no best (a fresh or resumed
run settles first); after them:

- **collapse**: the rank falls below ``rank_floor``, or below ``(1 − rank_drop)`` × the best
  rank seen, or the variance below ``(1 − variance_drop)`` × the best variance seen (a
  representation shrinking to a point keeps a scale-free rank but loses its variance);
- **divergence**: the loss's moving average rises past ``divergence_factor`` × its lowest.

The fault names the first bad point (``bad_step``) and the last good one before it
(``good_step``): the rollback goes to a checkpoint at or before ``good_step``, i.e. before the
drop. A batch rank is at most min(batch, dim), so the floor is in batch terms; the recipe's
"effective rank > 100 of 384" is judged on the evaluation's features (``policy/success.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.runbook import HealthLimits


@dataclass(frozen=True)
class HealthPoint:
    step: int
    rank: float
    variance: float
    loss_ema: float | None = None


@dataclass(frozen=True)
class HealthFault:
    kind: str  # "collapse" | "divergence"
    what: str  # one sentence with the numbers
    bad_step: int
    good_step: int | None
    evidence: dict[str, Any] = field(default_factory=dict)


def points_of(events: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> tuple[HealthPoint, ...]:
    """``health`` events → points (events without the numbers are skipped)."""
    out = []
    for ev in events:
        step, rank, var, loss = (
            ev.get("step"),
            ev.get("rank"),
            ev.get("variance"),
            ev.get("loss_ema"),
        )
        if not isinstance(step, int) or not isinstance(rank, int | float):
            continue
        if not isinstance(var, int | float):
            continue
        ema = float(loss) if isinstance(loss, int | float) else None
        out.append(HealthPoint(step, float(rank), float(var), ema))
    return tuple(out)


def health_fault(points: tuple[HealthPoint, ...], limits: HealthLimits) -> HealthFault | None:
    """The first collapse or divergence in ``points`` (see the module docstring), or None."""
    if not limits.enabled:
        return None
    best_rank = best_var = low_loss = None
    good: int | None = None
    for i, p in enumerate(points):
        if i >= limits.warmup_points and best_rank is not None and best_var is not None:
            fault = _judge(p, best_rank, best_var, low_loss, limits, good)
            if fault is not None:
                return fault
        best_rank = p.rank if best_rank is None else max(best_rank, p.rank)
        best_var = p.variance if best_var is None else max(best_var, p.variance)
        if p.loss_ema is not None and i >= limits.warmup_points - 1:
            low_loss = p.loss_ema if low_loss is None else min(low_loss, p.loss_ema)
        good = p.step
    return None


def _judge(
    p: HealthPoint,
    best_rank: float,
    best_var: float,
    low_loss: float | None,
    lim: HealthLimits,
    good: int | None,
) -> HealthFault | None:
    ev: dict[str, Any] = {
        "step": p.step,
        "rank": p.rank,
        "best_rank": round(best_rank, 4),
        "variance": p.variance,
        "best_variance": round(best_var, 6),
        "loss_ema": p.loss_ema,
        "lowest_loss_ema": low_loss,
        "bad_step": p.step,
        "good_step": good,
    }
    why = None
    if p.rank < lim.rank_floor:
        why = f"batch effective rank {p.rank:.2f} < floor {lim.rank_floor:g}"
    elif p.rank < (1 - lim.rank_drop) * best_rank:
        why = (
            f"batch effective rank {p.rank:.2f} fell more than {lim.rank_drop:.0%} from its "
            f"best {best_rank:.2f}"
        )
    elif p.variance < (1 - lim.variance_drop) * best_var:
        why = (
            f"feature variance {p.variance:.3g} fell more than {lim.variance_drop:.0%} from "
            f"its best {best_var:.3g}"
        )
    if why is not None:
        return HealthFault(
            "collapse", f"representation collapse at step {p.step}: {why}", p.step, good, ev
        )
    if (
        low_loss is not None
        and p.loss_ema is not None
        and p.loss_ema > lim.divergence_factor * low_loss
    ):
        what = (
            f"divergence at step {p.step}: the loss's moving average {p.loss_ema:.3g} is over "
            f"{lim.divergence_factor:g}× its lowest {low_loss:.3g}"
        )
        return HealthFault("divergence", what, p.step, good, ev)
    return None
