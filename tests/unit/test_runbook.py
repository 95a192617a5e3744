"""Runbook schema and loader: the shipped runbooks load, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.core.runbook import (
    RunbookError,
    config_key_exists,
    default_runbook_for,
    load_runbook,
    parse_runbook,
)
from orchestrator.core.state import Metrics
from orchestrator.policy import NightEvidence, judge

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["conservative", "aggressive", "demo"])
def test_shipped_runbooks_load(name: str) -> None:
    rb = load_runbook(ROOT / "runbooks" / f"{name}.yaml")
    assert rb.name == name
    assert rb.ladders.oom and rb.ladders.nonfinite and rb.ladders.features
    assert rb.success.must and rb.memory.ceiling_gb > rb.memory.warning_gb


def test_conservative_matches_design_numbers() -> None:
    rb = load_runbook(ROOT / "runbooks/conservative.yaml")
    assert [r.overrides for r in rb.ladders.oom[:2]] == [
        {"data.batch_size": 24},
        {"data.batch_size": 16},
    ]
    assert rb.ladders.slow.epochs == [50, 40, 30]
    assert rb.ladders.features == [
        "contrastive",
        "fpn",
        "gradient_checkpointing",
        "flash_attention",
    ]
    assert rb.memory.ceiling_gb == 28 and rb.limits.max_attempts_without_progress == 3


def _raw() -> dict:
    return yaml.safe_load((ROOT / "runbooks/conservative.yaml").read_text())


def test_unknown_key_is_named(tmp_path: Path) -> None:
    raw = _raw()
    raw["memory"]["celing_gb"] = 3
    p = tmp_path / "rb.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(RunbookError, match=r"rb.yaml.*\n.*memory.celing_gb: unknown key"):
        load_runbook(p)


def test_rung_key_must_exist_in_worker_config() -> None:
    raw = _raw()
    raw["ladders"]["oom"].append({"set": {"data.batchsize": 8}})
    with pytest.raises(RunbookError, match=r"ladders.oom\[4\].set.data.batchsize"):
        parse_runbook(raw, "x.yaml")


def test_threshold_check_needs_op_and_value() -> None:
    raw = _raw()
    raw["success"]["must"].append({"metric": "linear_probe"})
    with pytest.raises(RunbookError, match="needs op and value"):
        parse_runbook(raw, "x.yaml")


def test_config_key_exists() -> None:
    assert config_key_exists("data.batch_size")
    assert config_key_exists("model.ema.momentum")
    assert not config_key_exists("data.nope")
    assert not config_key_exists("data.batch_size.deeper")


def test_default_runbook_by_config_name() -> None:
    assert default_runbook_for("configs/demo_aggressive.yaml").name == "demo.yaml"
    assert default_runbook_for("x/overnight_training_aggressive.yaml").name == "aggressive.yaml"
    assert default_runbook_for("mine.yaml").name == "conservative.yaml"


def test_success_levels_and_relative_checks() -> None:
    demo = load_runbook(ROOT / "runbooks/demo.yaml")
    base = Metrics(epoch=0, knn={"20": 0.11}, linear_probe=0.10)
    good = Metrics(epoch=6, knn={"20": 0.35}, linear_probe=0.20)
    on = {"flash_attention": True, "fpn": False}
    ev = NightEvidence(features_planned=on, features_final=on)
    kw = {"no_unrecovered_nonfinite": True, "evidence": ev}
    s = judge(demo.success, good, base, finished_in_window=True, **kw)
    assert s.level == "should"  # knn gain 0.24 > 0.10, probe gain 0.10 > 0.05 but not > 0.15
    late = judge(demo.success, good, base, finished_in_window=False, **kw)
    assert late.level == "none"
    nobase = judge(demo.success, good, None, finished_in_window=True, **kw)
    assert nobase.level == "none"  # a relative check without a baseline fails
    cons = load_runbook(ROOT / "runbooks/conservative.yaml")
    healthy = NightEvidence(
        features_planned=on, features_final=on, speedup_vs_no_flash=3.2, final_loss=0.4
    )
    s2 = judge(
        cons.success,
        Metrics(knn={"20": 0.7}, linear_probe=0.66, effective_rank=180, feature_variance=0.3),
        None,
        finished_in_window=True,
        no_unrecovered_nonfinite=True,
        evidence=healthy,
    )
    assert s2.level == "stretch" and all(c.passed for c in s2.checks)


def test_progress_timeouts_key_and_its_former_spelling() -> None:
    """``progress:`` names the progress timeouts; a user's runbook that still says
    ``heartbeat:`` reads the same."""
    from orchestrator.core.runbook import parse_runbook

    new = parse_runbook({"name": "x", "progress": {"step_timeout_s": 7}}, "new.yaml")
    old = parse_runbook({"name": "x", "heartbeat": {"step_timeout_s": 7}}, "old.yaml")
    assert new.progress == old.progress and new.progress.step_timeout_s == 7


@pytest.mark.parametrize(
    ("config", "runbook"),
    [
        ("configs/demo_conservative.yaml", "demo"),
        ("configs/demo_aggressive.yaml", "demo"),
        ("/abs/overnight_training_conservative.yaml", "conservative"),
        ("overnight_training_aggressive.yaml", "aggressive"),
        ("my_aggressive_copy.yaml", "conservative"),  # a name is not matched by substring
        ("demo_mine.yaml", "conservative"),
    ],
)
def test_runbook_for_a_recipe_is_a_table(config: str, runbook: str) -> None:
    from orchestrator.policy.runbooks import runbook_name_for

    assert runbook_name_for(config) == runbook


def test_a_config_without_a_runbook_is_told_which_it_gets_and_why() -> None:
    from orchestrator.policy.runbooks import runbook_choice

    shipped = runbook_choice("configs/overnight_training_aggressive.yaml")
    assert shipped == "runbook: aggressive (the one written for overnight_training_aggressive.yaml)"
    copied = runbook_choice("/home/me/my_aggressive.yaml")
    assert copied.startswith("runbook: conservative (my_aggressive.yaml is not a shipped recipe")
    assert "--runbook" in copied


def test_every_shipped_recipe_has_its_runbook_in_the_table() -> None:
    from orchestrator.core.datafiles import shipped_root
    from orchestrator.policy.runbooks import RUNBOOK_FOR_RECIPE

    shipped = {p.name for p in (shipped_root() / "configs").glob("*.yaml")}
    assert shipped == set(RUNBOOK_FOR_RECIPE)
    for name in set(RUNBOOK_FOR_RECIPE.values()):
        assert (shipped_root() / "runbooks" / f"{name}.yaml").is_file()


def test_feature_names_are_one_list() -> None:
    from typing import get_args

    from orchestrator.core.runbook import FEATURE_KEYS, FeatureName

    assert list(get_args(FeatureName)) == list(FEATURE_KEYS)
