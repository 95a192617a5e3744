"""python bench/throughput.py --config FILE [--device D] [--batch B] [--steps N] [--set k=v]

More options: [--warmup W] [--accum A] [--threads T] [--data synthetic|real]
[--peak-tflops F] [--nproc N]; --set is repeatable (e.g. --set training.compile=true).

``--nproc N`` (N > 1) measures scaling instead: the worker's probe with one process and with N
under the launcher, the same micro-batch per rank, and prints img/s of each, the speedup and the
scaling efficiency (``bench/scaling.py``).

Throughput of the FULL H-JEPA optimizer step on whatever device is present: each timed step is
`TrainStep` exactly as the worker runs it — forward of context encoder, target encoder and
predictor under the run's autocast, the 3-level loss, VICReg, backward (with gradient
accumulation), clipping, AdamW (fused, skipping a non-finite step on the device) and the foreach
EMA update, pipelined as the worker runs it (step N's numbers read after step N+1 is launched).
``training.compile`` is honoured (trainer.model.hjepa.compile_model: the first warmup step pays the
compile, reported as ``first_step_s``), and so is the CPU allocator setting the worker uses
(trainer.runtime.allocator).

Input (``--data``):
- ``synthetic`` (default): random images through the real ``MaskCollator``; a pool of 4 steps
  is built and moved to the device before timing, so data loading is excluded.
- ``real``: the configured datasets through the worker's own DataLoader
  (``trainer.data.pipeline.TrainLoader``: transforms, seeded masks, ``data.num_workers`` persisting
  across epochs, pinning on CUDA) and its prefetcher (``trainer.data.prefetch``: the next batch's
  host → device copy on a side stream on CUDA); each timed step includes waiting for its
  batches.

The device is synchronised only before and after the timed region. FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` on one eager step of the same model and batch
shape (before any compile); ``mfu`` = achieved FLOP/s / peak, the peak from ``--peak-tflops``
or the table in ``bench/peaks.py`` (CPU: an estimate from cores × clock × SIMD width).

Prints one JSON object:
    config, device, device_name, precision, torch, data, photometric, compile, micro_batch,
    accum_steps, image_size, context_tokens, target_tokens, params, params_trainable, img_per_s,
    ms_per_step {mean, p50}, first_step_s, flops_per_img, achieved_tflops, peak_tflops,
    peak_source, mfu, peak_memory_bytes, wall_s, process_cpu_s, steps, warmup, nonfinite_steps
``process_cpu_s`` (CPU seconds this process used in the timed region) next to ``wall_s`` shows
how much of the machine the run really had: on a shared CPU, img/s alone misleads.
``peak_memory_bytes``: CUDA max_memory_allocated over the timed steps; MPS the largest driver
allocation sampled after each step; CPU the largest process RSS sampled after each step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peaks import peak_tflops
from bench.scaling import scaling
from trainer.config import ConfigError, load_config
from trainer.data.masks import MaskCollator
from trainer.data.pipeline import DataMissingError, TrainLoader, build_train_data
from trainer.data.prefetch import DevicePrefetch
from trainer.model.hjepa import build_model, compile_model
from trainer.runtime.allocator import keep_freed_memory
from trainer.runtime.device import (
    memory_readings,
    reset_peak_memory,
    select_device,
    select_precision,
    synchronize,
)
from trainer.train.step import TrainStep

_POOL = 4  # distinct pre-built optimizer steps, cycled through


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Throughput of the full H-JEPA train step.")
    ap.add_argument("--config", required=True, help="worker config (YAML)")
    ap.add_argument("--device", default=None, help="auto|cpu|cuda|mps (default: the config's)")
    ap.add_argument("--batch", type=int, default=None, help="micro-batch (data.batch_size)")
    ap.add_argument("--accum", type=int, default=None, help="training.accumulation_steps")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--data",
        choices=("synthetic", "real"),
        default="synthetic",
        help="synthetic: pre-built batches; real: the worker's DataLoader",
    )
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak TFLOP/s for MFU (default: bench/peaks.py)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="K=V",
        help="config override, as for the worker (repeatable)",
    )
    ap.add_argument(
        "--nproc", type=int, default=1, help="N > 1: scaling of N processes against one"
    )
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    return args


def synthetic_steps(cfg: Any, device: torch.device, micro: int, accum: int) -> list[list[Any]]:
    """``_POOL`` optimizer steps of ``accum`` masked micro-batches each, already on ``device``."""
    size = cfg.data.image_size
    gen = torch.Generator().manual_seed(cfg.experiment.seed)
    collate = MaskCollator(cfg.masking, size, cfg.model.patch_size, seed=cfg.experiment.seed)
    two_views = cfg.loss.use_contrastive
    steps = []
    for _ in range(_POOL):
        micro_batches = []
        for _ in range(accum):
            items: list[Any] = []
            for i in range(micro):
                x = torch.randn(3, size, size, generator=gen)
                view = (x, torch.randn(3, size, size, generator=gen)) if two_views else x
                items.append((view, i % 10))
            micro_batches.append(collate(items).to(device))
        steps.append(micro_batches)
    return steps


def real_steps(
    cfg: Any, device: torch.device, accum: int
) -> tuple[Callable[[int], list[Any]], str]:
    """(``next_step(i)``, where colour augmentation runs): ``next_step(i)`` gives the next
    ``accum`` micro-batches from the worker's own DataLoader (one per run, workers persisting,
    epochs following each other as in training), arriving on ``device`` through the worker's
    prefetcher (side-stream copy on CUDA, the colour half on the device when it runs there)."""
    train = build_train_data(cfg, device=device)
    masks = MaskCollator(
        cfg.masking, cfg.data.image_size, cfg.model.patch_size, seed=cfg.experiment.seed
    )
    loader = TrainLoader(cfg, train, masks, device)

    def batches() -> Iterator[Any]:
        for epoch in itertools.count(1):
            yield from DevicePrefetch(iter(loader.epoch(epoch, 0)), device)

    it = batches()
    return (lambda _i: [next(it) for _ in range(accum)]), train.photometric


def count_flops(step: TrainStep, batches: list[Any], lr: float, momentum: float) -> int:
    """FLOPs of one optimizer step (forward + backward + update), counted by torch."""
    with FlopCounterMode(display=False) as counter:
        step(batches, lr, momentum)
    return int(counter.get_total_flops())


def _sig(x: float) -> float:
    """x to 4 significant digits (tiny test models reach 1e-5 TFLOP/s)."""
    return float(f"{x:.4g}")


def _peak(device: torch.device, sampled: int) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return sampled


def _sample_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return 0  # the allocator keeps its own peak
    readings = memory_readings(device)
    return int(readings.get("driver", readings.get("allocated", 0)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    overrides = list(args.overrides)
    if args.batch is not None:
        overrides.append(f"data.batch_size={args.batch}")
    if args.accum is not None:
        overrides.append(f"training.accumulation_steps={args.accum}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    cfg = load_config(args.config, overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.experiment.seed)
    device = select_device(cfg.device)
    precision = select_precision(device, cfg.training.use_amp, cfg.training.precision)
    micro, accum = cfg.data.batch_size, cfg.training.accumulation_steps
    keep_freed_memory(device)

    model = build_model(cfg).to(device)
    model.train()
    train_step = TrainStep(model, cfg, device, precision)
    lr, momentum = cfg.training.lr, cfg.model.ema.momentum
    photometric = "none"  # synthetic batches are built as float images
    if args.data == "real":
        next_step, photometric = real_steps(cfg, device, accum)
    else:
        pool = synthetic_steps(cfg, device, micro, accum)
        next_step = lambda i: pool[i % _POOL]  # noqa: E731
    first = next_step(0)
    flops = count_flops(train_step, first, lr, momentum)  # eager, before any compile
    if cfg.training.compile:
        compile_model(model, device)

    nonfinite = 0
    first_step_s = None
    for i in range(args.warmup):
        t = time.perf_counter()
        nonfinite += not train_step(next_step(i + 1), lr, momentum).finite
        if i == 0:
            synchronize(device)
            first_step_s = round(time.perf_counter() - t, 3)
    synchronize(device)
    reset_peak_memory(device)

    peak_sample = _sample_memory(device)
    cpu0 = time.process_time()
    marks = [time.perf_counter()]
    previous = None
    for i in range(args.steps):  # pipelined as the worker runs: read a step after the next
        pending = train_step.launch(next_step(args.warmup + 1 + i), lr, momentum)
        if previous is not None:
            nonfinite += not previous.result().finite
        previous = pending
        marks.append(time.perf_counter())
    if previous is not None:
        nonfinite += not previous.result().finite
        if device.type != "cuda":
            peak_sample = max(peak_sample, _sample_memory(device))
    synchronize(device)
    total_s = time.perf_counter() - marks[0]
    cpu_s = time.process_time() - cpu0
    per_step_ms = [1000.0 * (b - a) for a, b in itertools.pairwise(marks)]

    img_per_s = args.steps * micro * accum / total_s
    flops_per_img = flops / (micro * accum)
    achieved = img_per_s * flops_per_img / 1e12
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops, "--peak-tflops"
    else:
        peak, peak_source = peak_tflops(device, precision.name)
    b0 = first[0]
    return {
        "config": str(args.config),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "precision": precision.name,
        "torch": torch.__version__,
        "data": args.data,
        "photometric": photometric,  # where colour augmentation ran (trainer.data.photometric)
        "compile": cfg.training.compile,
        "micro_batch": micro,
        "accum_steps": accum,
        "image_size": cfg.data.image_size,
        "context_tokens": int(b0.ctx_idx.shape[1]),
        "target_tokens": int(b0.tgt_idx.shape[2]),
        "params": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "img_per_s": round(img_per_s, 2),
        "ms_per_step": {
            "mean": round(1000.0 * total_s / args.steps, 2),
            "p50": round(statistics.median(per_step_ms), 2),
        },
        "first_step_s": first_step_s,
        "flops_per_img": flops_per_img,
        "achieved_tflops": _sig(achieved),
        "peak_tflops": peak,
        "peak_source": peak_source,
        "mfu": _sig(achieved / peak) if peak else None,
        "peak_memory_bytes": _peak(device, peak_sample),
        "wall_s": round(total_s, 3),
        "process_cpu_s": round(cpu_s, 3),
        "steps": args.steps,
        "warmup": args.warmup,
        "nonfinite_steps": nonfinite,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.nproc > 1:
            sets = list(args.overrides)
            if args.device:
                sets.append(f"device={args.device}")
            if args.accum:
                sets.append(f"training.accumulation_steps={args.accum}")
            micro = args.batch or load_config(args.config, sets).data.batch_size
            print(json.dumps(scaling(args.config, sets, micro, args.nproc, args.steps)))
            return 0
        result = run(args)
    except (ConfigError, DataMissingError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
