"""Test-wide settings: one torch/OpenMP thread per test process (the suite runs two processes,
``-n 2`` in pyproject, and the workers they start inherit this), so the slow tests share two
cores without oversubscribing them."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
