"""The code's shape, checked: lint and format clean, no source file over 400 lines, and the
layers the README's layout table promises (the orchestrator reaches the worker only through its
contract, the policy is pure and owns its types, a night never imports the views)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("orchestrator/**/*.py"), *ROOT.glob("trainer/**/*.py")])
MAX_LINES = 400


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "."], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_no_source_file_is_over_400_lines() -> None:
    big = {rel(p): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"split these along their seams: {big}"


def test_the_orchestrator_reaches_the_worker_only_through_its_contract() -> None:
    bad = {}
    for p in ROOT.glob("orchestrator/**/*.py"):
        used = {m for m in imports_of(p) if m.startswith("trainer.")}
        extra = {m for m in used if not m.startswith(("trainer.events", "trainer.config"))}
        if extra:
            bad[rel(p)] = sorted(extra)
    assert not bad, bad


def test_the_policy_owns_its_types_and_reads_no_files() -> None:
    bad = {}
    for p in ROOT.glob("orchestrator/policy/*.py"):
        used = {m for m in imports_of(p) if m.startswith("orchestrator.")}
        crossing = {
            m
            for m in used
            if not m.startswith(
                ("orchestrator.policy", "orchestrator.core.runbook", "orchestrator.core.units")
            )
        }
        if crossing:
            bad[rel(p)] = sorted(crossing)
    assert not bad, bad


def test_a_night_never_imports_the_views() -> None:
    """Only the ``run`` verb (a command, like ``start``) writes the report at the end."""
    bad = {}
    for p in ROOT.glob("orchestrator/night/*.py"):
        if p.name == "run_cmd.py":
            continue
        used = {m for m in imports_of(p) if m.startswith("orchestrator.views")}
        if used:
            bad[rel(p)] = sorted(used)
    assert not bad, bad


def test_the_orchestrator_type_checks() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
