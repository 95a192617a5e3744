"""Did the machine sleep? The wall clock running ahead of the monotonic clock says so.

    watch = ClockWatch()
    gap = watch.read(mono, wall)     # seconds the machine was away, or None

The monotonic clock stops while the machine is suspended (macOS: ``mach_absolute_time``; Linux:
``CLOCK_MONOTONIC``), the wall clock does not. Hangs are timed on the monotonic clock, so a
sleep is never a hang; the gap is what tells the night (and the morning report) that the
window shrank while nothing ran. Jumps below ``threshold_s`` (NTP slews, scheduling noise) and
backward jumps are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

SLEEP_GAP_S = 60.0


@dataclass
class ClockWatch:
    threshold_s: float = SLEEP_GAP_S
    _offset: float | None = None  # wall - mono at the last reading

    def read(self, mono: float, wall: float) -> float | None:
        """The forward gap since the last reading when it exceeds ``threshold_s``, else None."""
        offset = wall - mono
        last, self._offset = self._offset, offset
        if last is None:
            return None
        gap = offset - last
        return gap if gap > self.threshold_s else None
