"""User files are theirs: plans are edited round-trip (comments, quoting, layout kept, a .bak
left), and configs/plans that are not UTF-8 text are refused in one sentence naming them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.core.userfile import UserFileError, edit_yaml, read_text
from orchestrator.preflight.fit import ApplyError, apply_overrides

PLAN = """\
# my plan: keep this comment
name: mine   # trailing comment
description: 'single-quoted, on purpose'
nights:
  - name: a
    config: configs/demo_conservative.yaml
    runbook: runbooks/demo.yaml
    window: "4m"
  # the second night gets faults
  - name: b
    config: configs/demo_aggressive.yaml
    runbook: runbooks/demo.yaml
    overrides:
      faults.nonfinite_at_step: 100   # NaN at step 100
"""


def test_apply_keeps_comments_quoting_layout_and_leaves_a_backup(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN, encoding="utf-8")
    over = {"data.batch_size": 32, "training.epochs": 4}
    assert apply_overrides(plan, "configs/demo_aggressive.yaml", over) == ["b"]
    text = plan.read_text(encoding="utf-8")
    for kept in (
        "# my plan: keep this comment",
        "name: mine   # trailing comment",
        "description: 'single-quoted, on purpose'",
        'window: "4m"',
        "  # the second night gets faults",
        "faults.nonfinite_at_step: 100   # NaN at step 100",
    ):
        assert kept in text, (kept, text)
    doc = yaml.safe_load(text)
    assert doc["nights"][1]["overrides"] == {"faults.nonfinite_at_step": 100, **over}
    assert "overrides" not in doc["nights"][0]
    assert (tmp_path / "p.yaml.bak").read_text(encoding="utf-8") == PLAN
    # the untouched lines are byte-identical: only the added override lines differ
    added = [ln for ln in text.splitlines() if ln not in PLAN.splitlines()]
    assert sorted(added) == ["      data.batch_size: 32", "      training.epochs: 4"]


def test_apply_to_a_night_without_overrides_adds_a_block_style_mapping(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN, encoding="utf-8")
    apply_overrides(plan, "configs/demo_conservative.yaml", {"training.epochs": 3})
    doc = yaml.safe_load(plan.read_text(encoding="utf-8"))
    assert doc["nights"][0]["overrides"] == {"training.epochs": 3}
    assert "# my plan: keep this comment" in plan.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("raw", "said"),
    [(b"\x89PNG\r\n\x1a\n\x00\x00", "binary"), (b"name: caf\xe9\n", "not UTF-8")],
)
def test_binary_and_latin1_plans_are_refused_naming_the_file(
    tmp_path: Path, raw: bytes, said: str
) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_bytes(raw)
    with pytest.raises(UserFileError, match=said) as err:
        read_text(plan, "plan")
    assert str(plan) in str(err.value)
    with pytest.raises(ApplyError, match=said):
        apply_overrides(plan, "configs/demo_conservative.yaml", {"training.epochs": 3})
    assert plan.read_bytes() == raw
    assert not (tmp_path / "p.yaml.bak").exists()


def test_an_edit_that_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN, encoding="utf-8")
    before = plan.stat().st_mtime_ns
    assert edit_yaml(plan, lambda doc: False) is False
    assert plan.stat().st_mtime_ns == before
    assert not (tmp_path / "p.yaml.bak").exists()
