"""The demo conservative night learns: final kNN(k=20) beats the random encoder by ≥ 10 points."""

from __future__ import annotations

import subprocess

import pytest

from tests.workerutil import DEMO, env, events, worker_cmd

pytestmark = pytest.mark.slow


def test_demo_conservative_beats_random_encoder(tmp_path):
    r = subprocess.run(
        worker_cmd(DEMO, tmp_path, []), capture_output=True, text=True, timeout=900, env=env()
    )
    assert r.returncode == 0, r.stderr[-2000:]
    evals = events(tmp_path, "eval")
    first, last = evals[0], evals[-1]
    assert first["epoch"] == 0 and last["epoch"] == events(tmp_path, "started")[0]["epochs"]
    gain = last["knn"]["20"] - first["knn"]["20"]
    assert gain >= 0.10, (first["knn"], last["knn"])
    assert last["feature_std"] > 0.01  # not collapsed
