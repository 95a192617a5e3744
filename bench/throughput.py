"""python bench/throughput.py --config FILE [--device D] [--batch B] [--steps N] [--set k=v]

More options: [--warmup W] [--accum A] [--threads T]; --set is repeatable.

Throughput of the FULL H-JEPA optimizer step on whatever device is present: mask sampling is
done up front, then each timed step is `TrainStep` exactly as the worker runs it — forward of
context encoder, target encoder and predictor under the run's autocast, loss, backward (with
gradient accumulation), one finite check, clipping, AdamW (fused where available) and the
foreach EMA update. Input is synthetic (random images through the real `MaskCollator`), and a
small pool of batches is built and moved to the device before timing, so data loading is
excluded. The device is synchronised only before and after the timed region.

Prints one JSON object:
    config, device, precision, torch, micro_batch, accum_steps, image_size, params,
    params_trainable, img_per_s, ms_per_step {mean, p50}, peak_memory_bytes, wall_s,
    process_cpu_s, steps, warmup, nonfinite_steps
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
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import ConfigError, load_config
from trainer.device import (
    memory_readings,
    reset_peak_memory,
    select_device,
    select_precision,
    synchronize,
)
from trainer.masks import MaskCollator
from trainer.model import build_model
from trainer.step import TrainStep

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
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="K=V",
        help="config override, as for the worker (repeatable)",
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
    precision = select_precision(device, cfg.training.use_amp)
    micro, accum = cfg.data.batch_size, cfg.training.accumulation_steps

    model = build_model(cfg).to(device)
    model.train()
    train_step = TrainStep(model, cfg, device, precision)
    pool = synthetic_steps(cfg, device, micro, accum)
    lr, momentum = cfg.training.lr, cfg.model.ema.momentum

    nonfinite = 0
    for i in range(args.warmup):
        nonfinite += not train_step(pool[i % _POOL], lr, momentum).finite
    synchronize(device)
    reset_peak_memory(device)

    peak_sample = _sample_memory(device)
    cpu0 = time.process_time()
    marks = [time.perf_counter()]
    for i in range(args.steps):
        nonfinite += not train_step(pool[i % _POOL], lr, momentum).finite
        marks.append(time.perf_counter())
        if device.type != "cuda":
            peak_sample = max(peak_sample, _sample_memory(device))
    synchronize(device)
    total_s = time.perf_counter() - marks[0]
    cpu_s = time.process_time() - cpu0
    per_step_ms = [1000.0 * (b - a) for a, b in itertools.pairwise(marks)]

    return {
        "config": str(args.config),
        "device": str(device),
        "precision": precision.name,
        "torch": torch.__version__,
        "micro_batch": micro,
        "accum_steps": accum,
        "image_size": cfg.data.image_size,
        "params": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "img_per_s": round(args.steps * micro * accum / total_s, 2),
        "ms_per_step": {
            "mean": round(1000.0 * total_s / args.steps, 2),
            "p50": round(statistics.median(per_step_ms), 2),
        },
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
        result = run(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
