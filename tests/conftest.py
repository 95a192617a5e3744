"""Test-wide settings: one torch/OpenMP thread per test process (the suite runs two processes,
``-n 2`` in pyproject, and the workers they start inherit this), so the slow tests share two
cores without oversubscribing them. ``one_thread`` pins torch's intra-op threads to one for a
module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny tensors are
fastest that way and immune to a busy machine.

The tests are handed out longest first (``pytest_collection_modifyitems``): the end-to-end
tests, then the other ``slow`` ones, then the rest, each group in file order. With
``--dist loadgroup`` (pyproject) the two processes take them in that order, so no long test
starts while the other process has only seconds of work left; the shared demo run's tests
(``xdist_group("demo_run")``, the longest setup) go first as one unit."""

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def cost_rank(item: pytest.Item) -> int:
        if item.get_closest_marker("e2e"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=cost_rank)  # stable: file order within each group


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
