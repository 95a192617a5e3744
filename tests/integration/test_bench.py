"""The benches run the real worker or step: throughput.py prints one JSON object on a tiny
config; loader.py, scaling and quality.py (does a recipe learn?) print what they measure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workerutil import TINY as WORKER_TINY
from trainer.data.image_sets import write_image_folder
from trainer.eval.linear_probe import DEFAULT_L2_GRID
from trainer.runtime.device import cpu_native_bf16

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
    "data",
    "compile",
    "context_tokens",
    "target_tokens",
    "flops_per_img",
    "mfu",
    "peak_tflops",
    "first_step_s",
}


def run_bench(
    *args: str, script: str = "throughput.py", **env_extra: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
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
    assert out["device"] == "cpu"
    assert out["precision"] == ("bf16" if cpu_native_bf16() else "fp32")  # the worker's choice
    assert (out["micro_batch"], out["accum_steps"], out["image_size"], out["steps"]) == (
        6,
        2,
        32,
        2,
    )
    assert out["params"] > 0 and out["img_per_s"] > 0 and out["peak_memory_bytes"] > 0
    assert set(out["ms_per_step"]) == {"mean", "p50"}
    assert out["nonfinite_steps"] == 0
    assert out["data"] == "synthetic" and out["compile"] is False
    # FLOPs from torch's counter on the same step; MFU against the CPU estimate
    assert out["flops_per_img"] > 0 and out["peak_tflops"] > 0
    assert 0 < out["mfu"] < 1.5
    assert out["achieved_tflops"] == pytest.approx(
        out["img_per_s"] * out["flops_per_img"] / 1e12, rel=0.02
    )


@pytest.mark.slow
def test_bench_real_data_and_peak_override(tmp_path: Path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    args = ["--config", str(cfg), "--steps", "3", "--warmup", "1", "--threads", "1"]
    proc = run_bench(
        *args, "--data", "real", "--peak-tflops", "0.5", "--set", "data.synthetic.num_train=64"
    )  # 8 steps an epoch: crosses none
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["data"] == "real" and out["peak_source"] == "--peak-tflops"
    assert out["photometric"] == "host"  # auto on a CPU
    assert out["mfu"] == pytest.approx(out["achieved_tflops"] / 0.5, rel=0.02)
    # the 4x4 grid's static token counts, the same in every batch
    assert out["target_tokens"] == 3 and out["context_tokens"] >= 4


@pytest.mark.slow
def test_bench_compiles_the_step_on_cpu(tmp_path: Path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    proc = run_bench(
        "--config",
        str(cfg),
        "--steps",
        "3",
        "--warmup",
        "2",
        "--threads",
        "1",
        "--set",
        "training.compile=true",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["compile"] is True and out["nonfinite_steps"] == 0
    # the compile is paid once, in the first step; later steps reuse the one graph
    assert out["first_step_s"] > 5 * out["ms_per_step"]["p50"] / 1000


@pytest.mark.slow
def test_bench_bad_override_is_a_usage_error(tmp_path: Path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    proc = run_bench("--config", str(cfg), "--steps", "1", "--set", "training.no_such_knob=1")
    assert proc.returncode == 2
    assert "training.no_such_knob" in proc.stderr


@pytest.mark.slow
def test_bench_scaling_times_one_and_two_processes(tmp_path: Path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY + "evaluation: {eval_at_start: false}\n")
    out = run_bench("--config", str(cfg), "--nproc", "2", "--steps", "3", "--batch", "4")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["nproc"] == 2 and res["many"]["world_size"] == 2 and res["micro_batch"] == 4
    assert res["one"]["img_per_s"] > 0 and res["many"]["img_per_s"] > 0
    assert res["efficiency"] == pytest.approx(res["speedup"] / 2, abs=1e-3)


@pytest.mark.slow
def test_loader_bench_measures_both_places_for_colour(tmp_path: Path):
    """bench/loader.py: the pipeline alone, colour on the host and on the device, on CIFAR
    files in the real format (written by bench/fake_cifar.py)."""
    args = ["--device", "cpu", "--batch", "8", "--batches", "2", "--workers", "0", "2"]
    proc = run_bench(*args, script="loader.py", TMPDIR=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [(r["where"], r["workers"]) for r in rows] == [
        ("host", 0),
        ("host", 2),
        ("device", 0),
        ("device", 2),
    ]
    for r in rows:
        assert r["images"] == 16 and r["img_per_s"] > 0 and r["worker_ms_per_img"] > 0
        assert r["image_size"] == 224 and r["device"] == "cpu"


@pytest.mark.slow
def test_quality_bench_learns_on_real_scans_and_reports_the_probe_l2(tmp_path: Path):
    """bench/quality.py on the digit scans (an ImageFolder written from scikit-learn's copy):
    init → best → final for kNN and the probe, and the L2 the probe chose at each eval."""
    write_image_folder(tmp_path / "digits")
    sets = [a for s in WORKER_TINY for a in ("--set", s)]
    proc = run_bench(
        "--data", str(tmp_path / "digits"), "--epoch-size", "256", "--json", *sets,
        script="quality.py",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["epochs"] == 2 and out["steps"] == 32  # 256 samples / batch 16, two epochs
    assert set(out["metrics"]) == {"knn@20", "knn@1", "probe"}
    probe = out["metrics"]["probe"]
    assert len(probe["series"]) == 3  # random encoder, epoch 1, epoch 2
    assert probe["init"] > 0.2  # ten classes: a probe on real scans is far above chance
    assert len(probe["l2_series"]) == 3 and set(probe["l2_series"]) <= set(DEFAULT_L2_GRID)
