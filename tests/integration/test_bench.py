"""bench/throughput.py runs the real train step on a tiny config and prints one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TINY = """
model:
  encoder_type: custom
  embed_dim: 32
  depth: 2
  num_heads: 2
  patch_size: 8
  num_hierarchies: 2
  predictor: {depth: 1, num_heads: 2}
data:
  dataset: synthetic
  image_size: 32
  batch_size: 4
  num_workers: 0
loss:
  hierarchy_weights: [1.0, 0.5]
training:
  accumulation_steps: 2
device: cpu
"""

KEYS = {
    "config",
    "device",
    "precision",
    "micro_batch",
    "accum_steps",
    "image_size",
    "params",
    "img_per_s",
    "ms_per_step",
    "peak_memory_bytes",
    "steps",
}


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_bench_prints_one_json_object(tmp_path: Path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    proc = run_bench(
        "--config",
        str(cfg),
        "--steps",
        "2",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--batch",
        "6",
        "--set",
        "training.clip_grad=1.0",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert set(out) >= KEYS
    assert out["device"] == "cpu" and out["precision"] == "fp32"
    assert (out["micro_batch"], out["accum_steps"], out["image_size"], out["steps"]) == (
        6,
        2,
        32,
        2,
    )
    assert out["params"] > 0 and out["img_per_s"] > 0 and out["peak_memory_bytes"] > 0
    assert set(out["ms_per_step"]) == {"mean", "p50"}
    assert out["nonfinite_steps"] == 0


def test_bench_bad_override_is_a_usage_error(tmp_path: Path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    proc = run_bench("--config", str(cfg), "--steps", "1", "--set", "training.no_such_knob=1")
    assert proc.returncode == 2
    assert "training.no_such_knob" in proc.stderr
