"""Intra-op threads on a CPU device, fitted to the cores other processes leave free.

    threads = CpuThreads.for_run(device, world_size=1)   # None off a CPU or when pinned
    ...
    threads.tick()        # at step boundaries: one clock read; a sample every ``every_s``

Why: torch's CPU kernels split each op over ``torch.get_num_threads()`` OpenMP threads that
meet at a barrier after every parallel region. When another process keeps one of the cores
busy, the thread that shares that core arrives late at every barrier and the others spin
waiting for it: on a 2-core machine with one core busy, the demo's step took 2.7× its quiet
time with 2 threads and 1.3× with 1 thread; with ten processes competing it took 30× (8.7 s
against 0.28 s). A night on a laptop is never alone, so the worker measures, every ``every_s``
seconds, how many cores the *other* processes used (the system's busy CPU time less this
process tree's) and runs on the cores left, between 1 and the thread count it started with.
A change needs two samples in a row that agree (a compile or a short burst elsewhere does not
flip it back and forth).

Not governed: a device other than the CPU (the host threads only feed it), several ranks (the
launcher gives each rank its share, ``trainer/launch.py``), and a thread count the user set
(``OMP_NUM_THREADS`` in the environment, or ``torch.set_num_threads`` before the worker).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import torch

SAMPLE_EVERY_S = 20.0


def fitted_threads(cores: int, ceiling: int, others_busy: float) -> int:
    """Threads for the cores the other processes leave: a core counts as ours while the
    others use less than half of it (``ceil(free - 0.5)``), between 1 and ``ceiling``."""
    free = cores - max(0.0, others_busy)
    return max(1, min(ceiling, math.ceil(free - 0.5)))


@dataclass
class CpuSample:
    """Cumulative CPU seconds: every core's busy time, and this process tree's."""

    system_busy_s: float
    own_s: float
    at: float


def busy_seconds(times: Any, niced_self: bool) -> float:
    """Busy CPU seconds of ``psutil.cpu_times()``: all but idle and iowait (guest time is in
    user/nice already on Linux), and but the time of niced processes — they yield to the
    worker, so their cores are its — unless the worker runs niced itself."""
    skip = ["idle", "iowait", "guest", "guest_nice"] + ([] if niced_self else ["nice"])
    return float(sum(getattr(times, f) for f in times._fields if f not in skip))


def take_sample(clock: Callable[[], float] = time.monotonic) -> CpuSample:
    """The system's busy CPU seconds (:func:`busy_seconds`) and this process's and its live
    children's user + system seconds."""
    me = psutil.Process()
    busy = busy_seconds(psutil.cpu_times(), niced_self=me.nice() > 0)
    own = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            c = p.cpu_times()
        except psutil.Error:
            continue
        own += c.user + c.system
    return CpuSample(busy, own, clock())


def others_busy_cores(before: CpuSample, after: CpuSample) -> float | None:
    """Cores the other processes kept busy between two samples (None for no elapsed time)."""
    dt = after.at - before.at
    if dt <= 0:
        return None
    others = (after.system_busy_s - before.system_busy_s) - (after.own_s - before.own_s)
    return max(0.0, others / dt)


class CpuThreads:
    """The governor: samples every ``every_s`` seconds, sets ``torch.set_num_threads`` when
    two samples in a row agree on a new count."""

    def __init__(
        self,
        cores: int,
        ceiling: int,
        every_s: float = SAMPLE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        sample: Callable[[], CpuSample] | None = None,
        apply: Callable[[int], None] = torch.set_num_threads,
    ) -> None:
        self.cores, self.ceiling, self.every_s = cores, ceiling, every_s
        self.clock = clock
        self.sample = sample or (lambda: take_sample(clock))
        self.apply = apply
        self.threads = ceiling
        self.changes = 0
        self._last = self.sample()
        self._next_at = self.clock() + every_s
        self._proposed: int | None = None

    @classmethod
    def for_run(cls, device: torch.device, world_size: int) -> CpuThreads | None:
        """The governor for this run, or None where threads are not ours to choose."""
        if device.type != "cpu" or world_size > 1 or "OMP_NUM_THREADS" in os.environ:
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
        ceiling = torch.get_num_threads()
        if ceiling <= 1:
            return None
        return cls(cores, ceiling)

    def decide_now(self) -> int | None:
        """The first decision, without waiting for a second sample: from the seconds since
        the governor was made (the worker's set-up), so the first evaluation already runs on
        the cores that are free. None when nothing changed or under a second has passed."""
        current = self.sample()
        others = others_busy_cores(self._last, current)
        if others is None or current.at - self._last.at < 1.0:
            return None
        self._last = current
        self._next_at = current.at + self.every_s
        return self._set(fitted_threads(self.cores, self.ceiling, others), others)

    def tick(self) -> int | None:
        """At a step boundary: the new thread count when it changed now, else None."""
        now = self.clock()
        if now < self._next_at:
            return None
        self._next_at = now + self.every_s
        current = self.sample()
        others = others_busy_cores(self._last, current)
        self._last = current
        if others is None:
            return None
        want = fitted_threads(self.cores, self.ceiling, others)
        if want == self.threads:
            self._proposed = None
            return None
        if self._proposed != want:  # the first sample that asks: wait for a second
            self._proposed = want
            return None
        self._proposed = None
        return self._set(want, others)

    def _set(self, want: int, others: float) -> int | None:
        if want == self.threads:
            return None
        print(
            f"cpu threads {self.threads} -> {want}: other processes kept {others:.1f} of "
            f"{self.cores} cores busy",
            file=sys.stderr,
            flush=True,
        )
        self.threads = want
        self.changes += 1
        self.apply(want)
        return want
