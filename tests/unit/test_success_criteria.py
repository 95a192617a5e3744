"""The recipe's success criteria as the shipped runbooks score them (policy.success.judge)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.core.runbook import Check, RunbookError, load_runbook, parse_runbook
from orchestrator.core.state import Metrics
from orchestrator.policy import NightEvidence, judge
from orchestrator.policy.recovery import end_status

ROOT = Path(__file__).resolve().parents[2]
CONS = load_runbook(ROOT / "runbooks/conservative.yaml")
AGGR = load_runbook(ROOT / "runbooks/aggressive.yaml")
ALL_ON = {"flash_attention": True, "fpn": True, "contrastive": True, "gradient_checkpointing": True}
CONS_ON = {"flash_attention": True, "fpn": False, "contrastive": False}

# A conservative night that meets every criterion of its runbook up to stretch.
CONS_FINAL = Metrics(
    epoch=50, knn={"20": 0.62}, linear_probe=0.66, effective_rank=150, feature_variance=0.2
)
CONS_EV = NightEvidence(
    features_planned=CONS_ON, features_final=CONS_ON, speedup_vs_no_flash=3.1, final_loss=0.4
)
# An aggressive night that meets every should criterion (+8 points over night 1).
NIGHT1 = Metrics(epoch=50, linear_probe=0.62)
AGGR_FINAL = Metrics(
    epoch=40,
    knn={"20": 0.66},
    linear_probe=0.70,
    effective_rank=200,
    feature_variance=0.3,
    contrastive_accuracy=0.95,
)
AGGR_EV = NightEvidence(
    features_planned=ALL_ON,
    features_final=ALL_ON,
    previous=NIGHT1,
    previous_name="n1-conservative",
    final_loss=0.25,
    night_hours=8.2,
)


def verdict(rb, final, ev):  # type: ignore[no-untyped-def]
    return judge(
        rb.success, final, None, finished_in_window=True, no_unrecovered_nonfinite=True, evidence=ev
    )


def failed(v) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.name for c in v.checks if not c.passed]


def test_healthy_nights_reach_their_levels() -> None:
    assert verdict(CONS, CONS_FINAL, CONS_EV).level == "stretch"
    assert verdict(AGGR, AGGR_FINAL, AGGR_EV).level == "should"  # 0.70 < 0.73


def test_flash_switched_off_by_the_ladder_is_not_succeeded_on_the_conservative_runbook() -> None:
    off = dict(CONS_ON, flash_attention=False)
    ev = replace(
        CONS_EV, features_final=off, disabled_by={"flash_attention": "disable flash attention"}
    )
    v = verdict(CONS, CONS_FINAL, ev)
    assert v.level == "none"
    assert failed(v) == ["features_intact [flash_attention]"]
    check = next(c for c in v.checks if c.name.startswith("features_intact"))
    assert check.evidence == {
        "features": {"flash_attention": "switched off: disable flash attention"}
    }
    assert end_status(True, v.level, True) == "partial"  # night 2's gate stays closed


def test_flash_off_in_the_plan_also_fails_the_conservative_must() -> None:
    off = dict(CONS_ON, flash_attention=False)
    v = verdict(CONS, CONS_FINAL, replace(CONS_EV, features_planned=off, features_final=off))
    assert v.level == "none"


@pytest.mark.parametrize(
    "lost", ["fpn", "contrastive", "gradient_checkpointing", "flash_attention"]
)
def test_an_aggressive_night_that_lost_a_feature_fails_must(lost: str) -> None:
    v = verdict(AGGR, AGGR_FINAL, replace(AGGR_EV, features_final=dict(ALL_ON, **{lost: False})))
    assert v.level == "none"
    assert [c.name for c in v.checks if c.level == "must" and not c.passed] == [
        "features_intact [all enabled]"
    ]


def test_a_night_two_four_points_over_night_one_misses_should() -> None:
    v = verdict(AGGR, AGGR_FINAL, replace(AGGR_EV, previous=Metrics(linear_probe=0.66)))
    assert v.level == "must"
    assert failed(v) == [
        "gain_over_previous_night >= 0.05",
        "linear_probe > 0.73",
        "gain_over_previous_night >= 0.1",
        "linear_probe >= 0.75",
    ]
    gain = next(c for c in v.checks if c.name == "gain_over_previous_night >= 0.05")
    assert gain.value == pytest.approx(0.04)
    assert gain.evidence["previous_night"] == "n1-conservative"


def test_no_previous_night_is_not_a_gain() -> None:
    v = verdict(AGGR, AGGR_FINAL, replace(AGGR_EV, previous=None, previous_name=None))
    assert v.level == "must"
    gain = next(c for c in v.checks if c.name == "gain_over_previous_night >= 0.05")
    assert gain.passed is False and gain.evidence["missing"] == "no previous night"


@pytest.mark.parametrize(
    ("rb", "final", "ev", "name"),
    [
        (
            CONS,
            CONS_FINAL.model_copy(update={"effective_rank": 90.0}),
            CONS_EV,
            "effective_rank > 100",
        ),
        (
            CONS,
            CONS_FINAL.model_copy(update={"feature_variance": 0.08}),
            CONS_EV,
            "feature_variance > 0.1",
        ),
        (CONS, CONS_FINAL, replace(CONS_EV, final_loss=0.7), "final_loss < 0.5"),
        (
            CONS,
            CONS_FINAL.model_copy(update={"feature_variance": None}),
            CONS_EV,
            "feature_variance > 0.1",
        ),
        (
            AGGR,
            AGGR_FINAL.model_copy(update={"effective_rank": 40.0}),
            AGGR_EV,
            "effective_rank > 100",
        ),
        (
            AGGR,
            AGGR_FINAL.model_copy(update={"feature_variance": 0.01}),
            AGGR_EV,
            "feature_variance > 0.1",
        ),
        (AGGR, AGGR_FINAL, replace(AGGR_EV, final_loss=0.45), "final_loss < 0.3"),
        (
            AGGR,
            AGGR_FINAL.model_copy(update={"contrastive_accuracy": 0.8}),
            AGGR_EV,
            "contrastive_accuracy > 0.9",
        ),
        (AGGR, AGGR_FINAL, replace(AGGR_EV, night_hours=8.7), "night_hours < 8.5"),
    ],
)
def test_each_health_number_can_fail_a_level(rb, final, ev, name: str) -> None:  # type: ignore[no-untyped-def]
    v = verdict(rb, final, ev)
    assert name in failed(v)
    assert v.level == "must"  # the should level is lost, must still holds


def test_speedup_not_measured_fails_rather_than_passes() -> None:
    v = verdict(CONS, CONS_FINAL, replace(CONS_EV, speedup_vs_no_flash=None))
    assert v.level == "must"
    check = next(c for c in v.checks if c.name == "speedup_vs_no_flash >= 2")
    assert check.passed is False and check.evidence["missing"].startswith("not measured")
    two = verdict(CONS, CONS_FINAL, replace(CONS_EV, speedup_vs_no_flash=2.4))
    assert two.level == "should" and failed(two) == ["speedup_vs_no_flash >= 3"]


def test_check_schema_refuses_misplaced_keys() -> None:
    with pytest.raises(ValueError, match="takes no op"):
        Check(metric="features_intact", op=">", value=1)
    with pytest.raises(ValueError, match="features applies"):
        Check(metric="linear_probe", op=">", value=0.5, features=["fpn"])
    with pytest.raises(RunbookError, match="features"):
        parse_runbook(
            {
                "name": "x",
                "success": {"must": [{"metric": "features_intact", "features": ["fpm"]}]},
            },
            "x.yaml",
        )
