"""python bench/interleave_cpu.py [--batch 8] [--rounds 6] [--threads 2] [--compiled]

The reference I-JEPA step and ours, **interleaved step by step in one process**: the fairest
comparison a shared, loaded machine allows (each reference step is followed by one of ours, so
a load spike hits both; bench/compare_cpu.py runs them as separate processes instead). The
reference step is ``reference_step.py``'s ``ijepa_step_bench`` step closure as released
(ViT-S/16 and predictor from its own sources, its MaskCollator, AdamW with its schedulers,
SDPA or its naive attention, the EMA loop), rebuilt here so it can be called one step at a
time; ours is ``TrainStep`` on configs/overnight_training_conservative.yaml (the full 3-level
H-JEPA step). Both use 4 pre-built batches, cycled, and the same process-wide settings
(threads, allocator), so this measures the step code alone.

Prints one JSON object: median and best seconds per step for reference naive, reference SDPA
and ours (and ours compiled with ``--compiled``; its compile happens before timing), img/s from
the medians, and ``ratio`` = ours / best reference (median-based) and ``ratio_best``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare_cpu import REFERENCE  # noqa: E402
from bench.throughput import synthetic_steps  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.model.hjepa import build_model, compile_model  # noqa: E402
from trainer.runtime.allocator import keep_freed_memory  # noqa: E402
from trainer.runtime.device import select_precision  # noqa: E402
from trainer.train.step import TrainStep  # noqa: E402


def reference_step(ref_dir: Path, batch: int, flash: bool) -> Any:
    """``step(i)`` of reference_step.ijepa_step_bench on the CPU (fp32), as released."""
    sys.path.insert(0, str(ref_dir))
    sys.path.insert(0, str(ref_dir / "ijepa"))
    import reference_step as R
    from src.helper import init_model, init_opt
    from src.masks.multiblock import MaskCollator
    from src.masks.utils import apply_masks
    from src.utils.tensors import repeat_interleave_batch

    attention = R.vit.Attention
    forward = R.sdpa_forward if flash else R.NAIVE_FORWARD
    torch.manual_seed(0)
    enc, pred = init_model(
        device="cpu",
        patch_size=16,
        crop_size=224,
        pred_depth=6,
        pred_emb_dim=384,
        model_name="vit_small",
    )
    tgt = copy.deepcopy(enc)
    for p in tgt.parameters():
        p.requires_grad = False
    opt, _scaler, sched, wd_sched = init_opt(
        encoder=enc,
        predictor=pred,
        wd=0.04,
        final_wd=0.4,
        start_lr=2e-4,
        ref_lr=1e-3,
        final_lr=1e-6,
        iterations_per_epoch=1000,
        warmup=1,
        num_epochs=10,
        ipe_scale=1.0,
        use_bfloat16=False,
    )
    coll = MaskCollator(
        input_size=(224, 224),
        patch_size=16,
        enc_mask_scale=(0.85, 1.0),
        pred_mask_scale=(0.15, 0.2),
        aspect_ratio=(0.75, 1.5),
        nenc=1,
        npred=4,
        min_keep=10,
        allow_overlap=False,
    )
    batches = []
    for _ in range(4):
        _imgs, m_enc, m_pred = coll([(torch.zeros(3, 224, 224), 0) for _ in range(batch)])
        batches.append((torch.randn(batch, 3, 224, 224), m_enc, m_pred))

    def step(i: int) -> None:
        attention.forward = forward  # the two reference variants share the class
        imgs, masks_enc, masks_pred = batches[i % len(batches)]
        sched.step()
        wd_sched.step()
        with torch.no_grad():
            h = tgt(imgs)
            h = F.layer_norm(h, (h.size(-1),))
            h = apply_masks(h, masks_pred)
            h = repeat_interleave_batch(h, len(imgs), repeat=len(masks_enc))
        z = enc(imgs, masks_enc)
        z = pred(z, masks_enc, masks_pred)
        loss = F.smooth_l1_loss(z, h)
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for pq, pk in zip(enc.parameters(), tgt.parameters(), strict=True):
                pk.data.mul_(0.996).add_((1.0 - 0.996) * pq.detach().data)

    return step


def ours_step(batch: int, compiled: bool) -> Any:
    cfg = load_config(
        ROOT / "configs" / "overnight_training_conservative.yaml",
        [f"data.batch_size={batch}", "device=cpu"],
    )
    device = torch.device("cpu")
    torch.manual_seed(cfg.experiment.seed)
    model = build_model(cfg)
    model.train()
    if compiled:
        compile_model(model, device)
    precision = select_precision(device, cfg.training.use_amp, cfg.training.precision)
    train_step = TrainStep(model, cfg, device, precision)
    pool = synthetic_steps(cfg, device, batch, 1)
    lr, momentum = cfg.training.lr, cfg.model.ema.momentum

    def step(i: int) -> None:
        train_step(pool[i % len(pool)], lr, momentum)

    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Reference vs ours, interleaved per step.")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6, help="timed steps of each")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compiled", action="store_true", help="also ours with training.compile")
    ap.add_argument("--reference", default=str(REFERENCE))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    keep_freed_memory(torch.device("cpu"))
    ref_dir = Path(a.reference).parent
    steps = {
        "reference_naive": reference_step(ref_dir, a.batch, False),
        "reference_sdpa": reference_step(ref_dir, a.batch, True),
        "ours": ours_step(a.batch, False),
    }
    if a.compiled:
        steps["ours_compiled"] = ours_step(a.batch, True)
    for name, step in steps.items():
        for i in range(a.warmup):
            step(i)
        print(f"warm: {name}", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, float] = dict.fromkeys(steps, 0.0)
    for r in range(a.rounds):
        for name, step in steps.items():
            c, t = time.process_time(), time.perf_counter()
            step(a.warmup + r)
            times[name].append(time.perf_counter() - t)
            cpu[name] += time.process_time() - c
    out: dict[str, Any] = {
        "batch": a.batch,
        "threads": a.threads,
        "rounds": a.rounds,
        "torch": torch.__version__,
    }
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {
            "median_s": round(med, 3),
            "best_s": round(min(ts), 3),
            "img_per_s": round(a.batch / med, 3),
            "cpu_s_per_step": round(cpu[name] / a.rounds, 3),
        }
    best_ref = max(out["reference_naive"]["img_per_s"], out["reference_sdpa"]["img_per_s"])
    best_ref_best = a.batch / min(min(times["reference_naive"]), min(times["reference_sdpa"]))
    for name in [n for n in steps if n.startswith("ours")]:
        out[name]["ratio"] = round(out[name]["img_per_s"] / best_ref, 3)
        out[name]["ratio_best"] = round(a.batch / min(times[name]) / best_ref_best, 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
