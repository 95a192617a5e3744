"""The rules that read a night's record (``orchestrator.policy.record``), as tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from orchestrator.policy.record import (
    HEALTH_WARNING,
    MEMORY_WARNING,
    AttemptOutcome,
    attempts_without_progress,
    rungs_taken,
    stop_reason,
    warned,
)


@dataclass(frozen=True)
class D:
    kind: str
    trigger: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


A = AttemptOutcome


@pytest.mark.parametrize(
    ("attempts", "count"),
    [
        ([], 0),
        ([A(None, 100)], 0),  # running
        ([A("oom", -1)], 1),  # a failure that wrote no checkpoint made no progress
        ([A("oom", 100), A("crash", 100)], 1),  # no checkpoint past step 100
        ([A("oom", 100), A("crash", 100), A("crash", 50)], 2),
        ([A("oom", 100), A("crash", 100), A("crash", 200)], 0),  # went past: reset
        ([A("oom", 100), A("stopped", 100)], 0),  # a stop on purpose is not a failure
        ([A("oom", 100), A("finished", 100), A("crash", 100)], 1),  # finished: skipped
    ],
)
def test_attempts_without_progress(attempts: list[AttemptOutcome], count: int) -> None:
    assert attempts_without_progress(attempts) == count


@pytest.mark.parametrize(
    ("decisions", "triggers", "expected"),
    [
        ([D("continue", "memory")], MEMORY_WARNING, True),
        ([D("restart", "memory")], MEMORY_WARNING, False),  # acted on, not a warning
        ([D("continue", "collapse")], MEMORY_WARNING, False),
        ([D("continue", "collapse")], HEALTH_WARNING, True),
        ([D("continue", "divergence")], HEALTH_WARNING, True),
        ([], HEALTH_WARNING, False),
    ],
)
def test_warned(decisions: list[D], triggers: tuple[str, ...], expected: bool) -> None:
    assert warned(decisions, triggers) is expected


@pytest.mark.parametrize(
    ("decisions", "reason"),
    [
        ([], None),
        ([D("stop_for_deadline", "deadline", {"attempt": 2})], "deadline"),
        ([D("stop_for_deadline", "deadline", {"attempt": 1})], None),  # another attempt's
        ([D("stop", "", {"attempt": 2})], "daemon"),
        ([D("stop", "", {"attempt": 2, "reason": "user"})], "user"),
        ([D("restart", "slow", {"attempt": 2})], "slow"),
        ([D("restart", "hang", {"attempt": 2})], "hang"),
        ([D("restart", "oom", {"attempt": 2})], None),  # it had already died
        (
            [D("restart", "memory", {"attempt": 2}), D("stop_for_deadline", "", {"attempt": 2})],
            "deadline",  # the newest wins
        ),
    ],
)
def test_stop_reason(decisions: list[D], reason: str | None) -> None:
    assert stop_reason(decisions, 2) == reason


def test_rungs_taken_counts_rungs_and_names_disabled_features() -> None:
    rungs, disabled = rungs_taken(
        [
            {"ladder": "oom", "rung": 0},
            {"ladder": "oom", "rung": 1},
            {"ladder": "features", "rung": 0, "feature": "flash_attention"},
            {"ladder": "nonfinite", "rung": 0},
            {"trigger": "slow"},  # a live cut: no ladder rung
        ]
    )
    assert rungs == {"oom": 2, "features": 1, "nonfinite": 1}
    assert disabled == ("flash_attention",)
