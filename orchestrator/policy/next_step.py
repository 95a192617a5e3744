"""What a night's final linear probe says to do next: the bands of the upstream decision matrix,
and the demo's "did it learn" rule against the random-initialised encoder.

    probe_band(0.672)            # "good": resume for 50-100 more epochs
    demo_outcome(0.01, 0.08)     # "learned": either gain of at least DEMO_LEARNED_GAIN

Pure; the report words the answer (``orchestrator/views/report/advice.py``).
"""

from __future__ import annotations

from typing import Literal

ProbeBand = Literal["excellent", "good", "moderate", "poor"]

# Lowest linear probe of each band, best first; "excellent" is strictly above its bound.
EXCELLENT_ABOVE = 0.70
GOOD_FROM = 0.65
MODERATE_FROM = 0.60

DemoOutcome = Literal["learned", "barely", "none"]
DEMO_LEARNED_GAIN = 0.05  # a gain (fraction) over the random encoder that counts as learning


def probe_band(linear_probe: float) -> ProbeBand:
    """The decision matrix's band for a final linear probe (a fraction)."""
    if linear_probe > EXCELLENT_ABOVE:
        return "excellent"
    if linear_probe >= GOOD_FROM:
        return "good"
    if linear_probe >= MODERATE_FROM:
        return "moderate"
    return "poor"


def demo_outcome(probe_gain: float, knn_gain: float | None) -> DemoOutcome:
    """The demo's data is a texture task that a linear probe on mean-pooled features barely
    separates; kNN is its primary measure, so the larger of the two gains over the random
    encoder decides: at least ``DEMO_LEARNED_GAIN`` learned, above 0 barely, else none."""
    best = max(probe_gain, knn_gain if knn_gain is not None else probe_gain)
    if best >= DEMO_LEARNED_GAIN:
        return "learned"
    return "barely" if best > 0 else "none"
