"""The next-step rules the report words (``orchestrator.policy.next_step``), as tables."""

from __future__ import annotations

import pytest

from orchestrator.policy.next_step import demo_outcome, probe_band


@pytest.mark.parametrize(
    ("probe", "band"),
    [
        (0.75, "excellent"),
        (0.70, "good"),  # excellent is strictly above 70%
        (0.65, "good"),
        (0.6499, "moderate"),
        (0.60, "moderate"),
        (0.5999, "poor"),
        (0.0, "poor"),
    ],
)
def test_probe_band(probe: float, band: str) -> None:
    assert probe_band(probe) == band


@pytest.mark.parametrize(
    ("probe_gain", "knn_gain", "outcome"),
    [
        (0.06, None, "learned"),
        (0.05, None, "learned"),
        (0.01, 0.08, "learned"),  # kNN is the demo's primary measure: either gain counts
        (0.01, None, "barely"),
        (-0.02, 0.01, "barely"),
        (0.0, 0.0, "none"),
        (-0.03, -0.01, "none"),
    ],
)
def test_demo_outcome(probe_gain: float, knn_gain: float | None, outcome: str) -> None:
    assert demo_outcome(probe_gain, knn_gain) == outcome
