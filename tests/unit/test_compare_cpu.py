"""bench/compare_cpu.py compares like with like: the reference step runs under the autocast the
worker picks on this CPU (``REF_CPU_BF16=1`` for bf16), and in fp32 for ours forced to fp32."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.compare_cpu import ROOT, ours_precision, parse_args, run_reference
from trainer.config import load_config
from trainer.runtime.device import select_precision

FAKE_REFERENCE = """
import json, os, sys
bf16 = os.environ.get("REF_CPU_BF16") == "1"
print("warm-up noise")
print(json.dumps({"naive": 1.0, "sdpa": 2.0 if bf16 else 3.0, "argv": sys.argv[1:]}))
"""


def test_reference_runs_under_the_precision_asked(tmp_path: Path):
    fake = tmp_path / "reference_step.py"
    fake.write_text(FAKE_REFERENCE)
    a = parse_args(["--reference", str(fake), "--batch", "4", "--steps", "3"])
    bf16, fp32 = run_reference(a, "bf16"), run_reference(a, "fp32")
    assert (bf16["sdpa"], bf16["precision"]) == (2.0, "bf16")
    assert (fp32["sdpa"], fp32["precision"]) == (3.0, "fp32")
    assert bf16["wall_s"] >= 0 and "load1" in bf16


def test_auto_reference_precision_is_the_workers_pick_for_the_config():
    a = parse_args([])
    t = load_config(a.config, ["device=cpu"]).training
    assert ours_precision(a) == select_precision(torch.device("cpu"), t.use_amp, t.precision).name
    assert a.config.startswith(str(ROOT)) and a.steps >= 8


def test_each_ratio_divides_by_the_reference_at_the_same_precision(tmp_path: Path, monkeypatch):
    """The round logic alone (the runs are the subprocesses above and bench/throughput.py)."""
    import json

    from bench import compare_cpu

    refs = {"bf16": {"naive": 4.0, "sdpa": 5.0}, "fp32": {"naive": 2.0, "sdpa": 2.5}}
    asked: list[str] = []

    def reference(a, precision):
        asked.append(precision)
        return {**refs[precision], "precision": precision, "wall_s": 1, "cpu_s": 2, "load1": 0}

    def ours(a, compiled, fp32=False):
        return {
            "img_per_s": 2.0 if fp32 else 4.0,
            "precision": "fp32" if fp32 else "bf16",
            "mfu": 0.1,
            "timed_wall_s": 1,
            "timed_cpu_s": 2,
            "load1": 0,
        }

    monkeypatch.setattr(compare_cpu, "run_reference", reference)
    monkeypatch.setattr(compare_cpu, "run_ours", ours)
    out = tmp_path / "cmp.json"
    argv = ["--rounds", "2", "--fp32", "--ref-precision", "bf16", "--out", str(out)]
    assert compare_cpu.main(argv) == 0
    summary = json.loads(out.read_text())
    assert asked == ["bf16", "fp32"] * 2
    assert summary["reference_precision"] == "bf16"
    assert summary["median_ratio"] == 0.8  # 4.0 / best bf16 reference 5.0
    assert summary["median_ratio_fp32"] == 0.8  # 2.0 / best fp32 reference 2.5
