"""Collapse and divergence as faults: the health judgement and its ladder (pure policy)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.core.runbook import HealthLimits, load_runbook
from orchestrator.policy import DecisionKind, decide
from orchestrator.policy.health import HealthPoint, health_fault, points_of
from tests.unit.test_policy import CKPTS, CONS, DEADLINE, NOW, ended, hist, live

K = DecisionKind
LIM = HealthLimits()
ROOT = Path(__file__).resolve().parents[2]


def healthy(n: int = 8, start: int = 25, every: int = 25) -> list[HealthPoint]:
    """A noisy healthy run: rank 4-6 of a batch of 16, variance 0.1-0.2, loss falling."""
    ranks = [4.5, 5.6, 6.4, 4.3, 5.7, 4.7, 5.4, 5.6, 5.7, 4.6, 5.9, 4.9]
    vars_ = [0.19, 0.11, 0.11, 0.19, 0.12, 0.21, 0.17, 0.10, 0.13, 0.23, 0.11, 0.2]
    return [
        HealthPoint(start + every * i, ranks[i % 12], vars_[i % 12], 1.0 - 0.04 * i)
        for i in range(n)
    ]


def test_a_noisy_healthy_run_raises_nothing() -> None:
    assert health_fault(tuple(healthy(12)), LIM) is None


@pytest.mark.parametrize(
    ("bad", "kind", "why"),
    [
        (HealthPoint(225, 0.0, 0.0, 0.7), "collapse", "< floor"),
        (HealthPoint(225, 2.0, 0.15, 0.7), "collapse", "fell more than 60%"),
        (HealthPoint(225, 6.0, 0.001, 0.5), "collapse", "feature variance"),
        (HealthPoint(225, 5.0, 0.15, 1.9), "divergence", "2× its lowest"),
    ],
)
def test_each_fault_names_the_first_bad_point_and_the_last_good_one(
    bad: HealthPoint, kind: str, why: str
) -> None:
    points = (*healthy(8), bad, HealthPoint(250, 5.0, 0.15, 0.7))
    fault = health_fault(points, LIM)
    assert fault is not None and fault.kind == kind and why in fault.what
    assert (fault.bad_step, fault.good_step) == (225, 200)


def test_warmup_points_set_no_best_and_disabled_judges_nothing() -> None:
    early = (HealthPoint(25, 9.0, 0.5, 0.9), HealthPoint(50, 3.0, 0.04, 2.0))
    assert health_fault(early, LIM) is None  # the first two points only settle
    bad = (*healthy(4), HealthPoint(125, 0.0, 0.0, 0.5))
    assert health_fault(bad, LIM.model_copy(update={"enabled": False})) is None


def test_points_of_skips_events_without_numbers() -> None:
    evs = [{"step": 25, "rank": 5.0, "variance": 0.1, "loss_ema": 0.9}, {"step": 50}]
    assert points_of(evs) == (HealthPoint(25, 5.0, 0.1, 0.9),)


COLLAPSED = (*healthy(8), HealthPoint(225, 0.0, 0.0, 0.6))


def test_live_collapse_stops_the_worker_for_a_rollback() -> None:
    d = decide(live(health=COLLAPSED), hist(), CONS, NOW, DEADLINE)
    assert d.kind is K.RESTART and d.trigger == "collapse"
    assert d.evidence["bad_step"] == 225 and d.evidence["good_step"] == 200


def test_ended_collapse_rolls_back_before_the_drop_then_walks_the_ladder() -> None:
    seen = []
    for used in range(3):
        obs = ended("stopped", stop_reason="collapse", health=COLLAPSED)
        d = decide(obs, hist(rungs_used={"health": used}), CONS, NOW, DEADLINE)
        assert d.kind is K.RESTART and d.ladder == "health" and d.fallback
        # checkpoints at 100, 200, 300: the last good point is step 200, so 200 is kept
        assert d.resume_from == CKPTS[1].path and d.evidence["bad_step"] == 225
        seen.append(d.overrides)
    assert seen == [
        {"training.lr": 1e-4},
        {"model.ema.momentum": 0.998},
        {"loss.vicreg.std_coeff": 50.0},
    ]
    done = decide(
        ended("stopped", stop_reason="collapse", health=COLLAPSED),
        hist(rungs_used={"health": 3}),
        CONS,
        NOW,
        DEADLINE,
    )
    assert done.kind is K.END_NIGHT and "health ladder exhausted" in done.reason


def test_divergence_takes_the_same_ladder_and_the_variance_rung_needs_vicreg() -> None:
    diverged = (*healthy(8), HealthPoint(225, 5.0, 0.15, 2.0))
    no_vicreg = hist(rungs_used={"health": 2})
    facts = replace(no_vicreg.config, features=dict(no_vicreg.config.features, vicreg=False))
    obs = ended("stopped", stop_reason="divergence", health=diverged)
    d = decide(obs, replace(no_vicreg, config=facts), CONS, NOW, DEADLINE)
    assert d.kind is K.END_NIGHT  # the std_coeff rung does not apply without VICReg


def test_exhausted_health_ladder_warns_once_and_continues() -> None:
    h = hist(rungs_used={"health": 3})
    d = decide(live(health=COLLAPSED), h, CONS, NOW, DEADLINE)
    assert d.kind is K.CONTINUE and d.trigger == "collapse"
    again = decide(live(health=COLLAPSED), replace(h, health_warned=True), CONS, NOW, DEADLINE)
    assert again.kind is K.CONTINUE and again.trigger == ""


def test_shipped_runbooks_have_a_health_ladder() -> None:
    for name in ("conservative", "aggressive", "demo"):
        rb = load_runbook(ROOT / f"runbooks/{name}.yaml")
        keys = [next(iter(r.overrides)) for r in rb.ladders.health]
        assert keys == ["training.lr", "model.ema.momentum", "loss.vicreg.std_coeff"]
