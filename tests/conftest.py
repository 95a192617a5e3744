"""Test-wide settings: one torch/OpenMP thread per test process (the suite runs two processes,
``-n 2`` in pyproject, and the workers they start inherit this), so the slow tests share two
cores without oversubscribing them. ``one_thread`` pins torch's intra-op threads to one for a
module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny tensors are
fastest that way and immune to a busy machine.

The tests are ordered longest first (``pytest_collection_modifyitems``): the end-to-end
tests, then the other ``slow`` ones (the files that measured longest first), then the rest,
each group in file order. ``--dist worksteal`` (pyproject) gives each process half of that
list; the first process starts with the shared demo run (tests/e2e/conftest.py, minutes), the
other with the fast tests, and an idle process takes the tail of the other's queue, so the
two meet among short tests and end together.

The feature probe a night runs at its start (``orchestrator/night/start_probe.py``) is off for
the suite (``HJEPA_FEATURE_PROBE=0``): it would add a worker start-up to every night. The tests
of the probe, and the demo plan's end-to-end run, turn it back on."""

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HJEPA_FEATURE_PROBE", "0")

HEAVY_FIRST = (  # slow files by measured time per file on 2 cores, most first
    "tests/integration/test_every_rung.py",
    "tests/integration/test_night_faults.py",
    "tests/integration/test_matrix.py",
    "tests/integration/test_distributed.py",
    "tests/integration/test_worker.py",
    "tests/integration/test_composed_faults.py",
    "tests/integration/test_cli_fuzz.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def cost_rank(item: pytest.Item) -> tuple[int, int]:
        if item.get_closest_marker("e2e"):
            return (0, 0)
        if not item.get_closest_marker("slow"):
            return (2, 0)
        path = item.nodeid.split("::")[0]
        return (1, HEAVY_FIRST.index(path) if path in HEAVY_FIRST else len(HEAVY_FIRST))

    items.sort(key=cost_rank)  # stable: file order within each group


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
