"""A night's results, from what its attempts recorded: one rule for the night's live record
while it runs, its ending, and a night closed because its window passed with no daemon running.

- **Baseline**: the first evaluation at epoch 0 (the random encoder), whichever attempt ran it.
- **Final metrics**: the newest evaluation after epoch 0 (by the event's wall time): the model
  the night leaves behind, not its best one.
- **Best checkpoint**: the newest ``best`` event (the worker compares its evaluations by the
  recipe's ``checkpoint.metric`` and mode) whose checkpoint is still usable — in the current
  lineage, on disk — else that event's ``best.pt`` copy when it exists (pruning may have removed
  the original); with no such event, the newest usable checkpoint whose epoch was evaluated;
  else the newest usable checkpoint, marked not evaluated (the ending evaluates it separately;
  a night closed without that evaluation counts as failed, not partial).

Callers gather the events and the usable checkpoints (:mod:`orchestrator.night.history`) and
record what this returns; the report and status read the record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.policy.types import CheckpointRef


@dataclass(frozen=True)
class BestSeen:
    """A ``best`` event's checkpoint and its ``best.pt`` copy (None when that file is gone)."""

    path: str
    copy: str | None = None


@dataclass(frozen=True)
class NightResults:
    baseline: Mapping[str, Any] | None  # the epoch-0 eval event
    final: Mapping[str, Any] | None  # the newest eval event after epoch 0
    best_checkpoint: str | None
    best_evaluated: bool  # the best checkpoint's model was evaluated (a best event, or its epoch)


def night_results(
    evals: Sequence[Mapping[str, Any]],
    bests: Sequence[BestSeen],
    usable: Sequence[CheckpointRef],
) -> NightResults:
    """The night's results (see the module docstring). ``evals`` and ``bests`` in the order
    the attempts wrote them; ``usable``: the current lineage's checkpoints on disk."""
    baseline = next((e for e in evals if int(e.get("epoch", -1)) == 0), None)
    later = [(float(e.get("ts", 0.0)), i, e) for i, e in enumerate(evals) if epoch_of(e) > 0]
    final = max(later, key=lambda t: (t[0], t[1]))[2] if later else None
    paths = {r.path for r in usable}
    for seen in reversed(bests):
        if seen.path in paths:
            return NightResults(baseline, final, seen.path, True)
        if seen.copy is not None:
            return NightResults(baseline, final, seen.copy, True)
    evaluated = {epoch_of(e) for e in evals if epoch_of(e) > 0}
    ordered = sorted(usable, key=lambda r: (r.step, r.ts), reverse=True)
    scored = next((r for r in ordered if r.epoch in evaluated), None)
    top = scored or (ordered[0] if ordered else None)
    return NightResults(baseline, final, top.path if top else None, scored is not None)


def epoch_of(ev: Mapping[str, Any]) -> int:
    return int(ev.get("epoch", 0) or 0)
