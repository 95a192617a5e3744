"""Test-wide settings: one torch/OpenMP thread per test process (the suite runs two processes,
``-n 2`` in pyproject, and the workers they start inherit this), so the slow tests share two
cores without oversubscribing them. ``one_thread`` pins torch's intra-op threads to one for a
module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny tensors are
fastest that way and immune to a busy machine."""

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
