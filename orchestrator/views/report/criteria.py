"""The report's success criteria: one row per check the night runner judged, with the evidence
it read (``Night.success.checks``; the policy's :mod:`orchestrator.policy.success` scores them).

    criteria_table(facts)   # "| must | ✓ features intact [...]: yes | pass | features: ... |"
"""

from __future__ import annotations

from typing import Any

from orchestrator.views.fmt import NA
from orchestrator.views.report.advice import check_text
from orchestrator.views.report.facts import NightFacts
from orchestrator.views.report.markdown import md_table


def _evidence_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_evidence_value(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return NA if value is None else str(value)


def evidence_text(evidence: dict[str, Any]) -> str:
    """``features: flash_attention: on; epoch: 50`` — what a check read, in one cell."""
    return "; ".join(f"{k}: {_evidence_value(v)}" for k, v in evidence.items()) or "-"


def criteria_table(f: NightFacts) -> list[str]:
    """Every criterion of the night's runbook with its verdict and evidence (none: not judged)."""
    success = f.night.success
    if success is None:
        return ["Not judged yet (the night has not ended).", ""]
    verdicts = {True: "pass", False: "FAIL", None: NA}
    rows = [
        [c.level, check_text(c, f.check_specs.get(c.name)), verdicts[c.passed],
         evidence_text(c.evidence)]
        for c in success.checks
    ]  # fmt: skip
    return [
        f"Level reached: **{success.level}** (the night's status and the next night's gate come "
        "from these checks only).",
        "",
        *md_table(["level", "criterion: measured", "verdict", "evidence"], rows),
    ]
