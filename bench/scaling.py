"""Scaling over several processes: ``python bench/throughput.py --config F --nproc N``.

Times the worker's own ``--probe`` (the full step under DDP, data loading included) once with
one process and once with N processes under the launcher (``trainer.launch``, gloo on CPU, NCCL
on CUDA), each rank with the same micro-batch (weak scaling: the global batch grows N×), and
prints one JSON object:

    config, device, nproc, micro_batch, accum_steps, steps,
    one {img_per_s, ms_per_step}, many {img_per_s, ms_per_step, world_size},
    speedup (img/s N / img/s 1), efficiency (speedup / N)

On one shared CPU the ranks divide the same cores (``OMP_NUM_THREADS`` = cores / N), so the
efficiency there measures the overhead of DDP and gloo rather than a gain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def probe(config: str, sets: list[str], nproc: int, steps: int) -> dict[str, Any]:
    """The worker's probe JSON with ``nproc`` processes (1: the plain worker)."""
    head = [sys.executable, "-m", "trainer"]
    if nproc > 1:
        head = [sys.executable, "-m", "trainer.launch", "--standalone"]
        head += ["--nproc-per-node", str(nproc), "-m", "trainer"]
    with tempfile.TemporaryDirectory(prefix="hjepa-scaling-") as run_dir:
        cmd = [*head, "--config", config, "--run-dir", run_dir, "--probe", str(steps)]
        for item in sets:
            cmd += ["--set", item]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{") and '"ms_per_step"' in line:
            return dict(json.loads(line))
    raise RuntimeError(
        f"probe with {nproc} process(es) exited {out.returncode}: {out.stderr[-800:]}"
    )


def scaling(config: str, sets: list[str], micro: int, nproc: int, steps: int) -> dict[str, Any]:
    one = probe(config, [*sets, f"data.batch_size={micro}"], 1, steps)
    many = probe(config, [*sets, f"data.batch_size={micro * nproc}"], nproc, steps)
    speedup = many["img_per_s"] / one["img_per_s"]
    return {
        "config": config,
        "device": one["device"],
        "nproc": nproc,
        "micro_batch": micro,
        "accum_steps": one["accum_steps"],
        "steps": steps,
        "one": {k: round(one[k], 2) for k in ("img_per_s", "ms_per_step")},
        "many": {
            **{k: round(many[k], 2) for k in ("img_per_s", "ms_per_step")},
            "world_size": many.get("world_size"),
        },
        "speedup": round(speedup, 3),
        "efficiency": round(speedup / nproc, 3),
    }
