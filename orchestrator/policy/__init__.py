"""The pure policy: observations + night history + runbook + now → a decision.

No I/O, no torch, no psutil, no clocks (enforced by ``orchestrator/policy/ruff.toml``). The
supervisor and night runner gather observations and act on the decisions.
"""

from orchestrator.policy.classify import classify_exit, is_oom_text
from orchestrator.policy.decide import decide, progress_timeout, silence
from orchestrator.policy.memory import kill_oom_evidence
from orchestrator.policy.success import judge
from orchestrator.policy.types import (
    CONTINUE,
    CheckpointRef,
    ConfigFacts,
    Decision,
    DecisionKind,
    NightEvidence,
    NightHistory,
    Observation,
)

__all__ = [
    "CONTINUE",
    "CheckpointRef",
    "ConfigFacts",
    "Decision",
    "DecisionKind",
    "NightEvidence",
    "NightHistory",
    "Observation",
    "classify_exit",
    "decide",
    "is_oom_text",
    "judge",
    "kill_oom_evidence",
    "progress_timeout",
    "silence",
]
