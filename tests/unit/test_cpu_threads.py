"""The CPU thread governor (trainer/runtime/cpu_threads.py): threads fitted to the cores other
processes leave free, changed only when two samples agree; the sample itself reads real
CPU time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections import namedtuple

import pytest
import torch

from trainer.runtime.cpu_threads import (
    CpuSample,
    CpuThreads,
    busy_seconds,
    fitted_threads,
    others_busy_cores,
)


@pytest.mark.parametrize(
    ("cores", "ceiling", "others", "want"),
    [
        (2, 2, 0.0, 2),  # quiet: every thread it started with
        (2, 2, 0.4, 2),  # a light neighbour leaves the core to us
        (2, 2, 0.5, 1),  # half a core or more busy elsewhere: that core is theirs
        (2, 2, 1.0, 1),  # one busy core (a laptop doing something else)
        (2, 2, 9.0, 1),  # never below one thread
        (8, 4, 1.0, 4),  # never above the count it started with
        (8, 8, 2.6, 5),
        (8, 8, -0.2, 8),  # a negative reading (counter skew) counts as none
    ],
)
def test_fitted_threads(cores, ceiling, others, want):
    assert fitted_threads(cores, ceiling, others) == want


def test_busy_time_leaves_out_idle_and_niced_processes_unless_the_worker_is_niced():
    Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")
    t = Times(10.0, 4.0, 2.0, 50.0, 3.0, 0.5, 0.5, 1.0, 6.0, 1.0)
    assert busy_seconds(t, niced_self=False) == 14.0  # user, system, irq, softirq, steal
    assert busy_seconds(t, niced_self=True) == 18.0  # its own time is in the nice bucket


def test_others_are_the_system_less_this_process_tree():
    before = CpuSample(system_busy_s=100.0, own_s=10.0, at=0.0)
    after = CpuSample(system_busy_s=140.0, own_s=30.0, at=20.0)  # 40 s busy, 20 s ours
    assert others_busy_cores(before, after) == pytest.approx(1.0)
    assert others_busy_cores(after, after) is None


class Machine:
    """A fake clock and CPU counters: ``others`` cores busy elsewhere, ``ours`` here."""

    def __init__(self) -> None:
        self.t, self.busy, self.own = 0.0, 0.0, 0.0
        self.others, self.ours = 0.0, 2.0

    def advance(self, dt: float) -> None:
        self.t += dt
        self.busy += (self.others + self.ours) * dt
        self.own += self.ours * dt

    def sample(self) -> CpuSample:
        return CpuSample(self.busy, self.own, self.t)


def governor(m: Machine, applied: list[int]) -> CpuThreads:
    return CpuThreads(2, 2, every_s=10.0, clock=lambda: m.t, sample=m.sample, apply=applied.append)


def test_a_busy_neighbour_takes_a_thread_after_two_samples_and_gives_it_back():
    m, applied = Machine(), []
    g = governor(m, applied)
    m.advance(5.0)
    assert g.tick() is None  # not due yet: one clock read, no sample
    m.others = 1.0
    m.advance(5.0)
    assert g.tick() is None and applied == []  # first sample asking for 1: wait
    m.advance(10.0)
    assert g.tick() == 1 and applied == [1] and g.threads == 1
    m.others = 0.0
    m.advance(10.0)
    assert g.tick() is None
    m.advance(10.0)
    assert g.tick() == 2 and applied == [1, 2] and g.changes == 2


def test_a_burst_elsewhere_changes_nothing():
    m, applied = Machine(), []
    g = governor(m, applied)
    for others in [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]:  # never two samples in a row
        m.others = others
        m.advance(10.0)
        g.tick()
    assert applied == [] and g.threads == 2


def test_not_governed_off_the_cpu_with_ranks_or_when_the_user_pinned_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert CpuThreads.for_run(torch.device("meta"), 1) is None
    assert CpuThreads.for_run(torch.device("cpu"), 2) is None
    assert CpuThreads.for_run(torch.device("cpu"), 1) is not None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert CpuThreads.for_run(torch.device("cpu"), 1) is None


@pytest.mark.slow
def test_a_real_busy_process_elsewhere_is_seen(tmp_path):
    """A busy loop that is not the sampler's child shows as at least most of a core busy
    elsewhere (more where the machine has other work)."""
    probe = textwrap.dedent(
        """
        import time
        from trainer.runtime.cpu_threads import take_sample, others_busy_cores
        a = take_sample(); time.sleep(2.0); b = take_sample()
        print(others_busy_cores(a, b))
        """
    )
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
        )
    finally:
        busy.kill()
        busy.wait()
    assert float(out.stdout.strip()) >= 0.7
