"""bench/cuda_checks.py runs its CUDA code path on this CPU (``--device cpu``: the dispatch-mode
proxy for the sync debug mode): both overnight recipes at tiny shapes, alone and under DDP on a
real gloo group of one, a table and an exit code that agree with what was found, and a planted
``.item()`` inside the watched steps (fp16 with its GradScaler) that must be reported with its
line and fail the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "cuda_checks.py"
STEPS = 3
SHRINK = [
    "model.encoder_type=custom",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.patch_size=8",
    "model.predictor.depth=1",
    "model.predictor.embed_dim=32",
    "model.predictor.num_heads=2",
    "model.fpn.feature_dim=32",
    "data.image_size=32",
    "data.batch_size=4",
    "training.accumulation_steps=2",
]

pytestmark = pytest.mark.slow


def run_checks(out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict[str, Any]]]:
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--steps", str(STEPS), "--warmup", "1"]
    for s in SHRINK:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(
        [*cmd, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )
    rows = json.loads((out / "cuda_checks.json").read_text())["rows"]
    return proc, rows


def test_both_recipes_alone_and_under_ddp_with_an_exit_code_that_matches(tmp_path):
    proc, rows = run_checks(tmp_path)
    assert {(r["recipe"], r["mode"]) for r in rows} == {
        (recipe, mode)
        for recipe in ("overnight_conservative", "overnight_aggressive")
        for mode in ("1 process", "DDP world 1")
    }, proc.stderr[-2000:]
    failed = {(r["recipe"], r["mode"]): r["error"] for r in rows if "error" in r}
    # FPN under DDP failed at the second step where parameters got no gradient; that cell
    # may carry its error (the exit code then says so), no other may
    assert set(failed) <= {("overnight_aggressive", "DDP world 1")}, failed
    table = (tmp_path / "cuda_checks.md").read_text()
    assert table in proc.stdout  # printed last, as written
    assert "syncs by dispatch-mode proxy" in table
    assert len([line for line in table.splitlines() if line.startswith("| overnight_")]) == 4
    for r in (r for r in rows if "error" not in r):
        assert r["img_per_s"] > 0 and r["ms_per_step"] > 0 and r["peak_memory_bytes"] > 0
        assert r["mfu"] is not None and r["mfu"] > 0
        # the one-step-late read is seen, counted apart, and named where it is
        assert r["documented_reads"] >= STEPS
        assert all("trainer/train/step.py" in s and "in result" in s for s in r["documented_sites"])
        if r["syncs"]:
            assert r["first_sync"] in r["sync_sites"] and r["error_mode_gate"] != "passed"
        else:
            assert r["error_mode_gate"] == "passed"
    synced = any(r.get("syncs") or r.get("error_mode_gate", "passed") != "passed" for r in rows)
    expected = 1 if synced else (4 if any("error" in r for r in rows) else 0)
    assert proc.returncode == expected, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_a_planted_host_read_is_reported_with_its_line_and_fails_the_run(tmp_path):
    conservative = str(ROOT / "configs" / "overnight_training_conservative.yaml")
    proc, rows = run_checks(
        tmp_path, "--recipe", conservative, "--precision", "fp16", "--inject-read"
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert len(rows) == 2
    for r in rows:
        assert "error" not in r, r
        assert r["precision"] == "fp16"  # forced, with its GradScaler
        planted = [s for s in r["sync_sites"] if "bench/cuda_checks.py" in s and "run_cell" in s]
        assert planted, r["sync_sites"]
        assert r["syncs"] >= STEPS
        assert r["error_mode_gate"] != "passed"
    assert "| overnight_conservative | DDP world 1 |" in proc.stdout
