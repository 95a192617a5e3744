"""Test-wide settings: one torch/OpenMP thread per test process (the suite runs two processes,
``-n 2`` in pyproject, and the workers they start inherit this), so the slow tests share two
cores without oversubscribing them. ``one_thread`` pins torch's intra-op threads to one for a
module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny tensors are
fastest that way and immune to a busy machine.

The feature probe a night runs at its start (``orchestrator/night/start_probe.py``) is off for
the suite (``HJEPA_FEATURE_PROBE=0``): it would add a worker start-up to every night. The tests
of the probe, and the demo plan's end-to-end run, turn it back on."""

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HJEPA_FEATURE_PROBE", "0")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
