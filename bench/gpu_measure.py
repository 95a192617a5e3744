"""python3 bench/gpu_measure.py [--batch 128] [--steps 20] [--warmup 5] [--out DIR]

The GPU measurement of issue 9, in one run of under 8 minutes on an H100/H200-class card:
the public I-JEPA step as released (naive attention) and with SDPA, then ours (the full
3-level H-JEPA step of configs/overnight_training_conservative.yaml, ViT-S/16 224 px, bf16)
eager, compiled (``training.compile=true``), and with the real data pipeline (the worker's
DataLoader on CIFAR-10; random uint8 images written in CIFAR's on-disk format by
bench/fake_cifar.py when no dataset is there; once with colour augmentation on the GPU, the
default, and once all on the host, ``data.augmentation.photometric=host``), back to back on
the same device, each in its own process. For each: img/s, ms/step, MFU (FLOPs from
FlopCounterMode; peak from bench/peaks.py), peak memory, and the ratio to the best reference. Writes
``gpu_measure.json`` and ``gpu_measure.md`` (a Markdown table, torch version and device in
the title) to ``--out`` (default ``$OUT``, else the current directory) and prints the table.

Before running it on a bare device machine:
- the reference: copy ``../shared/reference-bench`` into the checkout as
  ``shared/reference-bench`` (or set ``REFERENCE_STEP`` to its ``reference_step.py``);
  without it the reference rows say "not found" and the rest still runs;
- the trainer needs pydantic, which the device image lacks: carry the wheels
  (pydantic, pydantic-core, annotated-types, typing-inspection) as the device README says.
Each run has its own timeout; a failed run becomes a row with its error, never a crash.
``bash bench/gpu_session.sh`` does all of this and then runs bench/cuda_checks.py (host syncs
in the recipes' steady-state step, alone and under DDP) in one command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "overnight_training_conservative.yaml"

_REF_SNIPPET = """
import json, sys
sys.path.insert(0, sys.argv[1])
import reference_step as R
b, flash, steps, warmup = int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
r = R.ijepa_step_bench(b, flash, steps, warmup)
print(json.dumps({"img_per_s": r["img_per_s"], "ms_per_step": r["ms_per_step"],
                  "peak_mem_gib": r["peak_mem_gib"], "flops_per_step": r["flops_per_step"]}))
"""


def find_reference() -> Path | None:
    env = os.environ.get("REFERENCE_STEP")
    candidates = [Path(env)] if env else []
    candidates += [
        d / "shared" / "reference-bench" / "reference_step.py"
        for d in (ROOT, ROOT.parent, ROOT.parent.parent)
    ]
    return next((p for p in candidates if p.is_file()), None)


def run_json(cmd: list[str], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """(last stdout line as JSON, or None; error text)."""
    # ROOT first, then what the caller had (the carried wheels' --target directory)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if proc.returncode:
        return None, f"exit {proc.returncode}: {proc.stderr.strip()[-600:]}"
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return None, f"no JSON in output: {proc.stdout[-300:]} {proc.stderr[-300:]}"


def reference_row(
    name: str, ref: Path | None, flash: bool, a: argparse.Namespace, peak: float | None
) -> dict[str, Any]:
    if ref is None:
        return {"run": name, "error": "reference not found (see the module docstring)"}
    cmd = [
        sys.executable,
        "-c",
        _REF_SNIPPET,
        str(ref.parent),
        str(a.batch),
        "1" if flash else "0",
        str(a.steps),
        str(a.warmup),
    ]
    res, err = run_json(cmd, timeout=150)
    if res is None:
        return {"run": name, "error": err}
    flops = res["flops_per_step"] if isinstance(res["flops_per_step"], (int, float)) else None
    mfu = (flops / (res["ms_per_step"] / 1000) / (peak * 1e12)) if flops and peak else None
    return {
        "run": name,
        "img_per_s": res["img_per_s"],
        "ms_per_step": res["ms_per_step"],
        "mfu": mfu,
        "gflop_per_img": flops / a.batch / 1e9 if flops else None,
        "peak_mem_gib": res["peak_mem_gib"],
        "notes": "reference_step.py",
    }


def ours_row(
    name: str, a: argparse.Namespace, extra: list[str], timeout: float, notes: str
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "throughput.py"),
        "--config",
        str(a.config),
        "--device",
        a.device,
        "--batch",
        str(a.batch),
        "--steps",
        str(a.steps),
        "--warmup",
        str(a.warmup),
        *extra,
    ]
    res, err = run_json(cmd, timeout)
    if res is None:
        return {"run": name, "error": err}
    return {
        "run": name,
        "img_per_s": res["img_per_s"],
        "ms_per_step": res["ms_per_step"]["mean"],
        "mfu": res["mfu"],
        "gflop_per_img": res["flops_per_img"] / 1e9,
        "peak_mem_gib": res["peak_memory_bytes"] / 2**30,
        "notes": f"{res['precision']}, {notes}; first step {res['first_step_s']} s; "
        f"Nc={res['context_tokens']}"
        f" Nt={res['target_tokens']}",
    }


def table(rows: list[dict[str, Any]], title: str) -> str:
    best_ref = max(
        (r.get("img_per_s") or 0 for r in rows if r["run"].startswith("reference")), default=0
    )
    lines = [
        f"### {title}",
        "",
        "| run | img/s | × best reference | MFU | GFLOP/img | ms/step | peak GiB | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            error = " ".join(r["error"].split()).replace("|", "/")
            lines.append(f"| {r['run']} | – | – | – | – | – | – | {error} |")
            continue
        ratio = f"{r['img_per_s'] / best_ref:.2f}" if best_ref else "–"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "–"
        gf = f"{r['gflop_per_img']:.1f}" if r.get("gflop_per_img") else "–"
        mem = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") else "–"
        lines.append(
            f"| {r['run']} | {r['img_per_s']:,.0f} | {ratio} | {mfu} | {gf} | "
            f"{r['ms_per_step']:.1f} | {mem} | {r.get('notes', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Reference vs ours on one GPU, one table.")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 4))
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--device", default="cuda", help="cuda (cpu: a smoke run of this script)")
    a = ap.parse_args(argv)

    import torch

    from bench.fake_cifar import write_fake_cifar
    from bench.peaks import peak_tflops

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA device: this script measures a GPU (--device cpu: smoke run)", file=sys.stderr
        )
        return 2
    cuda = device.type == "cuda"
    peak, peak_source = peak_tflops(device, "bf16" if cuda else "fp32")
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []

    def log(row: dict[str, Any]) -> None:
        rows.append(row)
        print(f"[{time.monotonic() - t0:5.0f} s] {json.dumps(row)}", flush=True)

    ref = find_reference()
    log(reference_row("reference naive", ref, False, a, peak))
    log(reference_row("reference SDPA", ref, True, a, peak))
    log(ours_row("ours eager", a, [], 120, "eager"))
    log(
        ours_row(
            "ours compiled",
            a,
            ["--set", "training.compile=true"],
            240,
            "torch.compile fwd+bwd, static shapes",
        )
    )
    data_root = Path(os.environ.get("HJEPA_DATA", tempfile.gettempdir())) / "hjepa-fake-data"
    real = Path("data") / "cifar-10-batches-py"
    root = Path("data") if real.is_dir() else write_fake_cifar(data_root).parent
    compiled_faster = (rows[3].get("img_per_s") or 0) > (rows[2].get("img_per_s") or 0)
    sets = [
        "--data",
        "real",
        "--set",
        f"data.datasets=[{{name: cifar10, path: {root}}}]",
        "--set",
        "data.use_multi_dataset=false",
        "--set",
        f"data.num_workers={a.workers}",
    ]
    if compiled_faster:
        sets += ["--set", "training.compile=true"]
    kind = "real CIFAR-10" if real.is_dir() else "fake CIFAR-10 (random uint8, CIFAR format)"
    how = f"{kind}, {a.workers} workers, {'compiled' if compiled_faster else 'eager'}"
    # the default (colour jitter + normalisation batched on the GPU), then all on the host
    log(ours_row("ours, real data pipeline", a, sets, 240, f"{how}, colour on the GPU"))
    host = ["--set", "data.augmentation.photometric=host"]
    log(ours_row("ours, real data, colour on host", a, sets + host, 240, f"{how}, colour on host"))

    title = (
        f"{name}, torch {torch.__version__}, batch {a.batch}, ours: {Path(a.config).name}, "
        f"{'bf16' if cuda else 'fp32'} "
        f"(peak {peak} TFLOP/s: {peak_source})"
    )
    md = table(rows, title)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_measure.md").write_text(md)
    (out / "gpu_measure.json").write_text(
        json.dumps(
            {
                "device": name,
                "torch": torch.__version__,
                "batch": a.batch,
                "peak_tflops": peak,
                "peak_source": peak_source,
                "seconds": round(time.monotonic() - t0, 1),
                "rows": rows,
            },
            indent=1,
        )
    )
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
