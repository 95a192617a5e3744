"""python3 bench/cuda_checks.py [--device cuda|cpu] [--steps 20] [--warmup 5] [--out DIR]

More options: [--recipe FILE]... [--precision fp32|bf16|fp16]... [--batch B] [--set k=v]...
[--inject-read]. The whole GPU session (this, then bench/gpu_measure.py) is
``bash bench/gpu_session.sh``.

The steady-state step of the shipped overnight recipes (configs/overnight_training_{conservative,
aggressive}.yaml, every feature switch as shipped: gradient checkpointing, FPN, the contrastive
term with its two views, per-module gradient norms on logging steps; synthetic batches through
the real MaskCollator, already on the device, so the host data pipeline and its DeiT-III
augmentation are not in it: gpu_measure.py's real-data rows time that), in the recipe's
precision (bf16 on CUDA) or in each ``--precision`` (fp16 runs its GradScaler), in two modes,
one after the other in this process:

- ``1 process``: ``TrainStep`` as the worker builds it alone;
- ``DDP world 1``: a real process group of one rank (nccl on CUDA, gloo elsewhere; rendezvous
  through MASTER_ADDR/MASTER_PORT, RANK=0, WORLD_SIZE=1), the model under DDP as
  ``trainer.runtime.dist.wrap_ddp`` builds it, and ``Dist`` saying two ranks so every line of the
  multi-rank step runs (``no_sync`` on all but the last micro-batch, the caller's extra numbers,
  the all-reduce of the statistics vector), as the worker's loop passes them.

Each cell: ``--warmup`` untimed steps (the first also counts FLOPs), then ``--steps`` steps
pipelined as the worker runs them (step N+1 launched before step N's numbers are read through
``PendingStep.result``) under :class:`bench.sync_watch.SyncWatch`: on CUDA
``torch.cuda.set_sync_debug_mode("warn")`` with every warning recorded with its stack (one run
lists every sync, where ``"error"`` would stop at the first); without CUDA a dispatch-mode proxy
that records ``aten._local_scalar_dense``, ``aten.item`` and the other host reads. Then one more
``launch()`` under the literal ``"error"`` mode. The reads stay inside the watch: the one in
``PendingStep.result`` (the documented one-step-late read) waits with a CUDA event's
``synchronize()`` for a pinned buffer the step copied into without blocking, and torch's sync
debug mode does not flag an event wait (``c10::cuda::CUDAEvent::synchronize`` calls
``cudaEventSynchronize`` without the check that ``.item()`` and stream synchronizes make), so it
needs no exemption; were it ever flagged, or on the CPU proxy (which sees its ``.cpu()`` and
``.tolist()``), it is counted apart as a documented read and is no failure.

Prints a table (recipe, mode, precision, img/s, ms/step, MFU, peak memory, syncs: count and the
first op with its line; DDP on/off img/s per recipe) and writes ``cuda_checks.md`` and
``cuda_checks.json`` to ``--out`` (default ``$OUT``, else the current directory). The timed steps
run under the watch: free on CUDA, a Python hook per op on the CPU proxy (its img/s is a smoke
number only). Exit 0 when no step synced, 1 when one did, 2 on bad arguments or no CUDA, 3 when
the watch failed its own self-check (a planted ``.item()`` not seen), 4 when a cell raised.
``--inject-read`` plants an ``.item()`` in every watched step: the run must then exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as td

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peaks import peak_tflops
from bench.sync_watch import SyncWatch, strict_sync
from bench.throughput import count_flops, synthetic_steps
from trainer.config import ConfigError, load_config
from trainer.model.hjepa import build_model
from trainer.runtime.device import memory_readings, reset_peak_memory, select_precision, synchronize
from trainer.runtime.dist import Dist, wrap_ddp
from trainer.train.step import TrainStep

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [
    ROOT / "configs" / "overnight_training_conservative.yaml",
    ROOT / "configs" / "overnight_training_aggressive.yaml",
]
MODES = ("1 process", "DDP world 1")
N_EXTRA = 5  # the loop's per-step control numbers (trainer.train.control.sync_out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Host syncs and speed of the recipes' steady step.")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu (the dispatch-mode proxy)")
    ap.add_argument("--steps", type=int, default=20, help="watched, timed steps per cell")
    ap.add_argument("--warmup", type=int, default=5, help="untimed, unwatched steps first")
    ap.add_argument("--recipe", action="append", default=None, help="config (repeatable)")
    ap.add_argument("--batch", type=int, default=None, help="micro-batch (default: recipe's)")
    ap.add_argument(
        "--precision",
        action="append",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help="training.precision per cell (repeatable; default: the recipe's own)",
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--inject-read", action="store_true", help="self-test: plant an .item()")
    a = ap.parse_args(argv)
    if a.steps < 2 or a.warmup < 1:
        ap.error("--steps must be >= 2 and --warmup >= 1")
    return a


# -- the process group of one ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def group_of_one(device: torch.device) -> Iterator[Dist]:
    """A real process group with this process as its only rank; the ``Dist`` it yields says
    two ranks so the step runs its multi-rank lines (``Dist.init`` makes no group alone)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ["RANK"], os.environ["WORLD_SIZE"] = "0", "1"
    backend = "nccl" if device.type == "cuda" else "gloo"
    kw: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    td.init_process_group(backend, init_method="env://", rank=0, world_size=1, **kw)
    try:
        yield Dist(rank=0, world=2, active=True)
    finally:
        td.destroy_process_group()


# -- one cell ------------------------------------------------------------------------------------
def _peak_bytes(device: torch.device, sampled: int) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return max(sampled, int(memory_readings(device).get("allocated", 0)))


def run_cell(
    cfg: Any, device: torch.device, mode: str, a: argparse.Namespace, dist: Dist | None
) -> dict[str, Any]:
    torch.manual_seed(cfg.experiment.seed)
    precision = select_precision(device, cfg.training.use_amp, cfg.training.precision)
    model = build_model(cfg).to(device)
    model.train()
    ddp = wrap_ddp(model, dist) if dist is not None else None
    step = TrainStep(model, cfg, device, precision, dist=dist, ddp=ddp)
    micro, accum = cfg.data.batch_size, cfg.training.accumulation_steps
    pool = synthetic_steps(cfg, device, micro, accum)
    lr, mom = cfg.training.lr, cfg.model.ema.momentum
    extra = [0.0] * N_EXTRA if dist is not None else None
    every = cfg.logging.log_frequency

    def launch(i: int) -> Any:
        norms = cfg.logging.log_gradients and i % every == 0  # the loop's logging steps
        return step.launch(pool[i % len(pool)], lr, mom, grad_norms=norms, extra=extra)

    flops = count_flops(step, pool[0], lr, mom)  # the first warm-up step
    for i in range(1, a.warmup):
        launch(i).result()
    synchronize(device)
    reset_peak_memory(device)
    sampled = 0

    watch = SyncWatch(device)
    t0 = time.perf_counter()
    marks = [t0]
    with watch:
        previous = None
        for i in range(a.steps):
            pending = launch(i)
            if a.inject_read:
                float(next(model.parameters()).sum())  # the self-test's planted sync
            if previous is not None:
                previous.result()  # the documented read, one step late
            previous = pending
            marks.append(time.perf_counter())
        assert previous is not None
        previous.result()
    synchronize(device)
    total_s = time.perf_counter() - t0
    if device.type != "cuda":
        sampled = int(memory_readings(device).get("allocated", 0))
    peak = _peak_bytes(device, sampled)

    gate_error = ""
    try:  # the literal gate: launch() under set_sync_debug_mode("error")
        with strict_sync(device):
            pending = launch(a.steps)
            if a.inject_read:
                float(next(model.parameters()).sum())
        pending.result()
    except RuntimeError as exc:
        gate_error = " ".join(str(exc).split())[:200]

    img_per_s = a.steps * micro * accum / total_s
    peak_tf, _ = peak_tflops(device, precision.name)
    achieved = img_per_s * flops / (micro * accum) / 1e12
    bad = watch.undocumented
    row = {
        "recipe": Path(cfg.experiment.output_dir).name or cfg.experiment.name,
        "mode": mode,
        "precision": precision.name,
        "micro_batch": micro,
        "accum_steps": accum,
        "img_per_s": round(img_per_s, 2),
        "ms_per_step": round(1000.0 * total_s / a.steps, 2),
        "ms_per_step_p50": round(
            statistics.median(1000.0 * (b - a_) for a_, b in itertools.pairwise(marks)),
            2,
        ),
        "mfu": float(f"{achieved / peak_tf:.4g}") if peak_tf else None,
        "peak_memory_bytes": peak,
        "syncs": len(bad),
        "first_sync": f"{bad[0].op} at {bad[0].where}" if bad else "",
        "sync_sites": sorted({f"{v.op} at {v.where}" for v in bad}),
        "documented_reads": sum(v.documented for v in watch.violations),
        "documented_sites": sorted(
            {f"{v.op} at {v.where}" for v in watch.violations if v.documented}
        ),
        "error_mode_gate": gate_error or "passed",
        "watch": watch.kind,
    }
    return row


def self_check(device: torch.device) -> bool:
    """The watch sees a planted ``.item()`` (else a quiet table would prove nothing)."""
    with SyncWatch(device) as watch:
        float(torch.ones(4, device=device).sum())
    return len(watch.undocumented) >= 1


# -- the table -----------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| recipe | mode | precision | img/s | DDP/1-proc | ms/step | MFU | peak GiB | syncs "
        "| first sync | documented reads | error-mode gate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (r["recipe"], r["precision"])  # noqa: E731
    alone = {key(r): r.get("img_per_s") for r in rows if r["mode"] == MODES[0]}
    for r in rows:
        if "error" in r:
            err = " ".join(r["error"].split()).replace("|", "/")[:300]
            lines.append(
                f"| {r['recipe']} | {r['mode']} | {r['precision']} | – | – | – | – | – | – "
                f"| {err} | – | – |"
            )
            continue
        base = alone.get(key(r))
        ratio = f"{r['img_per_s'] / base:.3f}" if r["mode"] != MODES[0] and base else "–"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "–"
        first = r["first_sync"].replace("|", "/") or "–"
        lines.append(
            f"| {r['recipe']} | {r['mode']} | {r['precision']} | {r['img_per_s']:,.1f} | {ratio} "
            f"| {r['ms_per_step']:.1f} | {mfu} | {r['peak_memory_bytes'] / 2**30:.2f} "
            f"| {r['syncs']} | {first} | {r['documented_reads']} "
            f"| {'passed' if r['error_mode_gate'] == 'passed' else 'raised'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu for the dispatch-mode proxy", file=sys.stderr)
        return 2
    if device.type == "cuda":
        if device.index is None:  # the process group's device_id needs an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    recipes = [Path(r) for r in a.recipe] if a.recipe else RECIPES
    sets = [*a.overrides, f"device={a.device}"]
    if a.batch is not None:
        sets.append(f"data.batch_size={a.batch}")
    forced = [[f"training.precision={p}"] for p in a.precision] if a.precision else [[]]
    try:
        cells = [(r, load_config(r, sets + f)) for f in forced for r in recipes]
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    live = self_check(device)  # else a quiet table would prove nothing

    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    for mode in MODES:
        with group_of_one(device) if mode != MODES[0] else contextlib.nullcontext() as dist:
            for recipe, cfg in cells:
                try:
                    row = run_cell(cfg, device, mode, a, dist)
                except Exception as exc:  # one failing cell is a row, never the whole table
                    name = Path(cfg.experiment.output_dir).name or recipe.stem
                    row = {
                        "recipe": name,
                        "mode": mode,
                        "precision": cfg.training.precision,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                rows.append(row)
                gc.collect()  # the cell's model, optimizer and batches
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                print(f"[{time.monotonic() - t0:5.0f} s] {json.dumps(row)}", flush=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    watch = SyncWatch(device).kind
    title = (
        f"Steady-state step checks on {name}, torch {torch.__version__}, "
        f"{a.steps} steps after {a.warmup} warm-up, syncs by {watch}"
    )
    md = table(rows, title)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda_checks.md").write_text(md)
    (out / "cuda_checks.json").write_text(
        json.dumps(
            {"device": name, "torch": torch.__version__, "watch_live": live, "rows": rows},
            indent=1,
        )
    )
    print(md)
    if not live:
        print("the sync watch did NOT see a planted .item(): the syncs column proves nothing")
        return 3
    if any(r.get("syncs") or r.get("error_mode_gate", "passed") != "passed" for r in rows):
        return 1
    return 4 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
