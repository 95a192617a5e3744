"""python bench/compare_cpu.py [--rounds 3] [--batch 8] [--steps 8] [--compiled] [--fp32]

More options: [--warmup 1] [--threads 2] [--config FILE] [--reference PATH] [--out FILE.json]
[--ref-precision auto|fp32|bf16].

The CPU speed check of issue 9: the public I-JEPA step (``reference_step.py --reference B S W``,
naive and SDPA attention) and ours (``bench/throughput.py --config ... --device cpu --batch B``,
the full 3-level H-JEPA step at the precision the worker picks; with ``--compiled`` also under
``training.compile=true``; with ``--fp32`` also forced to fp32, the precision the reference
runs in on a CPU, for a same-precision ratio), run back to back as separate processes,
like with like: the reference runs under the autocast ours runs in (``--ref-precision auto``:
``REF_CPU_BF16=1`` when the worker picks bf16 on this CPU, see
``../shared/reference-bench/README.md``), and with ``--fp32`` once more in fp32 for ours fp32,
alternating, ``--rounds`` times, every process with ``OMP_NUM_THREADS`` = torch threads =
``--threads``. Each run records its img/s, the wall
seconds and CPU seconds of its whole process (children rusage: user + sys; a process that got
the cores it asked for shows ≈ threads × wall in the timed part), and the 1-minute load
average before it started, so a loaded machine shows in the numbers instead of hiding in them.

Prints the ratio ``ours / best(reference naive, reference SDPA)`` per round, its median over
rounds, and best-of-rounds ours / best-of-rounds reference (on a shared machine a transient
load only ever slows a run down, so the best of several runs is the least disturbed figure);
writes everything as JSON to ``--out`` when given. A failed run raises (exit ≠ 0).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# ../shared/reference-bench next to the checkout (or next to its parent, for a worktree)
_REF_CANDIDATES = [
    d / "shared" / "reference-bench" / "reference_step.py"
    for d in (ROOT.parent, ROOT.parent.parent)
]
REFERENCE = next((p for p in _REF_CANDIDATES if p.is_file()), _REF_CANDIDATES[0])
CONFIG = ROOT / "configs" / "overnight_training_conservative.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Reference I-JEPA step vs ours on this CPU.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--reference", default=os.environ.get("REFERENCE_STEP", str(REFERENCE)))
    ap.add_argument("--compiled", action="store_true", help="also ours with training.compile")
    ap.add_argument(
        "--fp32", action="store_true", help="also ours in fp32, the reference's CPU precision"
    )
    ap.add_argument(
        "--ref-precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="the reference's CPU precision (auto: the one ours picks from --config)",
    )
    ap.add_argument("--out", default=None, help="write the runs and ratios as JSON here")
    return ap.parse_args(argv)


def timed(
    cmd: list[str], threads: int, extra_env: dict[str, str] | None = None
) -> tuple[str, dict[str, float]]:
    """Run ``cmd``; (stdout, {wall_s, cpu_s, load1}). Raises on a non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    env.update(extra_env or {})
    load1 = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.stdout, {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load1": round(load1, 2)}


def ours_precision(a: argparse.Namespace) -> str:
    """The precision the worker picks for ``--config`` on this CPU (what throughput.py runs)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from trainer.config import load_config
    from trainer.runtime.device import select_precision

    t = load_config(a.config, ["device=cpu"]).training
    return select_precision(torch.device("cpu"), t.use_amp, t.precision).name


def run_reference(a: argparse.Namespace, precision: str) -> dict[str, Any]:
    """The reference step at ``precision`` (fp32, or bf16 through ``REF_CPU_BF16=1``)."""
    cmd = [sys.executable, a.reference, "--reference", str(a.batch), str(a.steps), str(a.warmup)]
    out, usage = timed(cmd, a.threads, {"REF_CPU_BF16": "1" if precision == "bf16" else "0"})
    res = json.loads(out.strip().splitlines()[-1])
    return {"naive": res["naive"], "sdpa": res["sdpa"], "precision": precision, **usage}


def run_ours(a: argparse.Namespace, compiled: bool, fp32: bool = False) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "throughput.py"),
        "--config",
        a.config,
        "--device",
        "cpu",
        "--batch",
        str(a.batch),
        "--steps",
        str(a.steps),
        "--warmup",
        str(max(a.warmup, 2 if compiled else 1)),
        "--threads",
        str(a.threads),
    ]
    if compiled:
        cmd += ["--set", "training.compile=true"]
    if fp32:
        cmd += ["--set", "training.precision=fp32"]
    out, usage = timed(cmd, a.threads)
    res = json.loads(out.strip().splitlines()[-1])
    keep = (
        "img_per_s",
        "mfu",
        "flops_per_img",
        "wall_s",
        "process_cpu_s",
        "first_step_s",
        "context_tokens",
        "target_tokens",
        "torch",
        "precision",
    )
    return {
        **{k: res[k] for k in keep},
        "timed_wall_s": res["wall_s"],
        "timed_cpu_s": res["process_cpu_s"],
        **usage,
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    ref_precision = ours_precision(a) if a.ref_precision == "auto" else a.ref_precision
    rounds = []
    for r in range(a.rounds):
        row: dict[str, Any] = {
            "reference": run_reference(a, ref_precision),
            "ours": run_ours(a, False),
        }
        if a.compiled:
            row["ours_compiled"] = run_ours(a, True)
        if a.fp32:
            row["ours_fp32"] = run_ours(a, False, fp32=True)
            row["reference_fp32"] = (
                row["reference"] if ref_precision == "fp32" else run_reference(a, "fp32")
            )
        best_ref = max(row["reference"]["naive"], row["reference"]["sdpa"])
        row["ratio"] = round(row["ours"]["img_per_s"] / best_ref, 3)
        if a.fp32:
            ref32 = row["reference_fp32"]
            row["ratio_fp32"] = round(
                row["ours_fp32"]["img_per_s"] / max(ref32["naive"], ref32["sdpa"]), 3
            )
        if a.compiled:
            row["ratio_compiled"] = round(row["ours_compiled"]["img_per_s"] / best_ref, 3)
        rounds.append(row)
        ref, ours = row["reference"], row["ours"]
        line = (
            f"round {r + 1}: reference {ref['precision']} naive {ref['naive']:.2f} / sdpa "
            f"{ref['sdpa']:.2f} "
            f"img/s (process {ref['wall_s']} s wall, {ref['cpu_s']} s CPU, load "
            f"{ref['load1']}) | ours {ours['img_per_s']:.2f} img/s {ours['precision']}, "
            f"MFU {ours['mfu']} "
            f"(timed {ours['timed_wall_s']} s wall, {ours['timed_cpu_s']} s CPU, load "
            f"{ours['load1']}) | ratio {row['ratio']}"
        )
        if a.compiled:
            c = row["ours_compiled"]
            line += (
                f" | compiled {c['img_per_s']:.2f} img/s (first step {c['first_step_s']} s)"
                f", ratio {row['ratio_compiled']}"
            )
        if a.fp32:
            f = row["ours_fp32"]
            line += f" | ours fp32 {f['img_per_s']:.2f} img/s, ratio {row['ratio_fp32']}"
        print(line, flush=True)
    best_ref = max(max(r["reference"]["naive"], r["reference"]["sdpa"]) for r in rounds)
    best_ours = max(r["ours"]["img_per_s"] for r in rounds)
    summary = {
        "reference_precision": ref_precision,
        "batch": a.batch,
        "threads": a.threads,
        "steps": a.steps,
        "warmup": a.warmup,
        "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
        "best_reference": best_ref,
        "best_ours": best_ours,
        "best_ratio": round(best_ours / best_ref, 3),
        "median_ratio_compiled": round(statistics.median(r["ratio_compiled"] for r in rounds), 3)
        if a.compiled
        else None,
        "best_ratio_compiled": round(
            max(r["ours_compiled"]["img_per_s"] for r in rounds) / best_ref, 3
        )
        if a.compiled
        else None,
        "median_ratio_fp32": round(statistics.median(r["ratio_fp32"] for r in rounds), 3)
        if a.fp32
        else None,
        "rounds": rounds,
    }
    print(
        f"ours / best reference: median of rounds {summary['median_ratio']}, best of rounds "
        f"{summary['best_ratio']} ({best_ours:.2f} / {best_ref:.2f} img/s)"
        + (
            f"; compiled: median {summary['median_ratio_compiled']}, best "
            f"{summary['best_ratio_compiled']}"
            if a.compiled
            else ""
        )
    )
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
