"""The demo conservative night learns: against the random encoder (epoch 0), the final kNN(k=20)
gains ≥ 10 points and the linear probe ≥ 5 (the runbook's must and should checks)."""

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
    probe_gain = last["linear_probe"] - first["linear_probe"]
    assert probe_gain >= 0.05, (first["linear_probe"], last["linear_probe"])
    assert last["feature_std"] > 0.01  # not collapsed
