"""The code's shape, checked: lint and format clean, no source file over 400 lines, and the
layers the README's layout table promises (the orchestrator reaches the worker only through its
contract, the policy is pure and owns its types, a night never imports the views), and no module
outside ``orchestrator/policy/`` re-making a decision the policy makes."""

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


@pytest.mark.slow
def test_the_orchestrator_type_checks() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


ENDED_SET = {"succeeded", "partial", "failed", "skipped"}
PROBE_BANDS = {0.70, 0.65, 0.60}
RESULTS = {"best_checkpoint", "final_metrics", "baseline_metrics"}


def _policy_rules_outside(path: Path) -> list[str]:
    """The decisions of ``orchestrator/policy/`` re-made in ``path``, as found by their shape:

    - the ended statuses spelt out as a literal (``core.state.ENDED`` derives them from the
      transitions table);
    - a runbook or recipe picked by a substring or prefix of a name (``policy.runbooks``);
    - a stop escalation's timings written as a tuple (``policy.recovery.escalation`` /
      ``orphan_escalation``);
    - a decision's ``kind`` compared with ``"continue"``/``"stop"``/``"stop_for_deadline"``
      (warnings and stop reasons: ``policy.record``);
    - an attempt's ``exit_kind`` compared with ``"nonfinite"`` (``policy.recovery``);
    - a value compared with a next-step probe band as a float literal (``policy.next_step``);
    - a night's results (``best_checkpoint``, ``final_metrics``, ``baseline_metrics``) assigned
      anywhere but ``night/history.py``'s ``record_results`` (``policy.results`` picks them)."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Assign | ast.AnnAssign) and path.name != "history.py":
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr in RESULTS for t in targets):
                found.append(f"{line}: a night's results picked outside policy.results")
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
            if values == ENDED_SET and len(node.elts) == len(ENDED_SET):
                found.append(f"{line}: the ended statuses as a literal")
        elif isinstance(node, ast.Compare):
            left, right = node.left, node.comparators[0]
            names = {
                n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", None)
                for n in (left, right)
            }
            consts = {n.value for n in (left, right) if isinstance(n, ast.Constant)}
            if isinstance(node.ops[0], ast.In) and consts & {"aggressive", "conservative", "demo"}:
                found.append(f"{line}: a runbook picked by a name's substring")
            if "kind" in names and consts & {"continue", "stop", "stop_for_deadline"}:
                found.append(f"{line}: a recorded decision's kind read as a rule")
            if "exit_kind" in names and "nonfinite" in consts:
                found.append(f"{line}: the unrecovered-NaN rule")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            args, attr = node.args, node.func.attr
            first = args[0].value if args and isinstance(args[0], ast.Constant) else None
            if attr == "startswith" and str(first).startswith(("demo", "aggr", "conserv")):
                found.append(f"{line}: a runbook picked by a name's prefix")
            if attr == "stop_group" and len(args) > 2 and isinstance(args[2], ast.Tuple):
                found.append(f"{line}: stop timings outside the policy")
        if isinstance(node, ast.Compare) and "views" in path.parts:
            for side in [node.left, *node.comparators]:  # a band compared with, not a size
                if isinstance(side, ast.Constant) and side.value in PROBE_BANDS:
                    found.append(f"{line}: a next-step probe band as a literal")
    return found


def test_no_module_outside_the_policy_makes_its_decisions() -> None:
    """See :func:`_policy_rules_outside` for what is checked (``core/state.py`` holds the
    transitions table the ended set derives from)."""
    bad = {}
    for p in ROOT.glob("orchestrator/**/*.py"):
        if "policy" in p.relative_to(ROOT).parts or p.name == "state.py":
            continue
        if found := _policy_rules_outside(p):
            bad[rel(p)] = found
    assert not bad, bad


def test_no_class_has_more_than_one_project_base() -> None:
    """Objects instead of mixins: a class composes the project's objects it needs rather than
    inheriting several of them (library bases such as pydantic's or ``Enum`` do not count)."""
    project = {
        node.name
        for p in SOURCES
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef)
    }
    bad = {}
    for p in SOURCES:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                ours = [
                    b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
                ]
                ours = [b for b in ours if b in project]
                if len(ours) > 1:
                    bad[f"{rel(p)}:{node.name}"] = ours
    assert not bad, bad
