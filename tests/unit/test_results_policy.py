"""A night's results — baseline, final metrics, best checkpoint — by one rule
(:mod:`orchestrator.policy.results`), table-tested, and the same rule through every caller:
the live record, the ending and a night closed after its window passed."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.policy import CheckpointRef
from orchestrator.policy.results import BestSeen, night_results


def ev(epoch: int, ts: float, probe: float = 0.5) -> dict[str, Any]:
    return {"type": "eval", "epoch": epoch, "ts": ts, "linear_probe": probe}


def ref(path: str, epoch: int, step: int, ts: float = 0.0) -> CheckpointRef:
    return CheckpointRef(path, epoch, step, ts)


A, B, C = ref("a.pt", 1, 10, 1.0), ref("b.pt", 2, 20, 2.0), ref("c.pt", 3, 30, 3.0)


@pytest.mark.parametrize(
    ("evals", "bests", "usable", "best", "evaluated"),
    [
        # nothing ran
        ([], [], [], None, False),
        # the newest best event whose checkpoint is usable
        ([ev(1, 1), ev(2, 2)], [BestSeen("a.pt"), BestSeen("b.pt")], [A, B], "b.pt", True),
        # the best by metric, not the newest checkpoint
        ([ev(1, 1), ev(2, 2)], [BestSeen("a.pt")], [A, B], "a.pt", True),
        # the best's original pruned: its best.pt copy
        ([ev(1, 1)], [BestSeen("gone.pt", "run/best.pt")], [B], "run/best.pt", True),
        # an abandoned best (not in the lineage, no copy): an older usable best event
        ([ev(1, 1), ev(2, 2)], [BestSeen("a.pt"), BestSeen("x.pt")], [A], "a.pt", True),
        # no best event: the newest checkpoint whose epoch was evaluated
        ([ev(1, 1)], [], [A, B], "a.pt", True),
        # no best event, nothing evaluated after epoch 0: the newest, not evaluated
        ([ev(0, 0)], [], [A, B, C], "c.pt", False),
        # the order of the usable list does not matter: newest by step
        ([], [], [C, A, B], "c.pt", False),
    ],
)
def test_best_checkpoint(
    evals: list[dict[str, Any]],
    bests: list[BestSeen],
    usable: list[CheckpointRef],
    best: str | None,
    evaluated: bool,
) -> None:
    got = night_results(evals, bests, usable)
    assert (got.best_checkpoint, got.best_evaluated) == (best, evaluated)


def test_final_is_the_newest_evaluation_after_epoch_0_and_baseline_the_first_at_0() -> None:
    evals = [ev(0, 1.0, 0.1), ev(1, 2.0, 0.3), ev(0, 3.0, 0.2), ev(2, 5.0, 0.6), ev(1, 4.0, 0.4)]
    got = night_results(evals, [], [])
    assert got.baseline is not None and got.baseline["linear_probe"] == 0.1
    assert got.final is not None and got.final["linear_probe"] == 0.6
    # a resumed lineage re-evaluating an earlier epoch later in time: that is the final model
    got = night_results([*evals, ev(1, 9.0, 0.45)], [], [])
    assert got.final is not None and got.final["linear_probe"] == 0.45
    # only the random encoder was evaluated: no final metrics
    got = night_results([ev(0, 1.0)], [], [])
    assert got.final is None and got.baseline is not None
    # equal times: the one written later
    got = night_results([ev(1, 1.0, 0.3), ev(2, 1.0, 0.7)], [], [])
    assert got.final is not None and got.final["linear_probe"] == 0.7
