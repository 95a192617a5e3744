"""Shipped configs/plans/runbooks: the working directory's copies first, then the shipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.datafiles import init_dir, resolve_data, shipped_root
from orchestrator.core.runbook import default_runbook_for
from orchestrator.schedule.plan import PlanError, resolve_plan_path


def test_local_copies_win_and_init_writes_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = shipped_root()
    assert resolve_plan_path("demo") == shipped / "configs" / "plans" / "demo.yaml"
    assert default_runbook_for("configs/demo_conservative.yaml") == shipped / "runbooks/demo.yaml"
    written = init_dir(tmp_path)
    assert tmp_path / "configs" / "plans" / "demo.yaml" in written
    assert tmp_path / "runbooks" / "overnight-guide.md" in written
    assert resolve_plan_path("demo") == (tmp_path / "configs" / "plans" / "demo.yaml").resolve()
    assert default_runbook_for("x/demo_conservative.yaml") == tmp_path / "runbooks" / "demo.yaml"
    assert resolve_data("configs/demo_aggressive.yaml") == tmp_path / "configs/demo_aggressive.yaml"
    # a second init keeps edited files
    (tmp_path / "runbooks" / "demo.yaml").write_text("edited")
    assert tmp_path / "runbooks" / "demo.yaml" not in init_dir(tmp_path)
    assert (tmp_path / "runbooks" / "demo.yaml").read_text() == "edited"
    with pytest.raises(PlanError, match=r"known: .*demo"):
        resolve_plan_path("nope")
