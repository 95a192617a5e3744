"""``hjepa-night preflight``: the checklist to run before going to bed.

    hjepa-night preflight --config configs/overnight_training_conservative.yaml [--runbook FILE]
        [--set key=value ...] [--probe-steps 5] [--window 8h] [--state-dir var]

Each check prints pass / warn / fail with its evidence and a one-line fix; exit 0 when nothing
failed, 1 otherwise. The checks (upstream's pre-flight list, with numbers from this machine):

- config: the worker config (with ``--set``) validates; runbook: it loads (default: the one
  ``orchestrator.runbook.default_runbook_for`` picks for the config).
- dataset: every training dataset opens (``trainer.data.describe``); a missing one names the
  expected path and the setting or command that fetches it.
- disk: free space where the runs go vs the checkpoints kept (``keep_last_k`` + best + one being
  written, each the weights, EMA target and AdamW moments, estimated from the model sizes).
- memory: available RAM vs the runbook's expected use (``memory.good_gb``) and ceiling.
- device: what ``auto`` resolves to (or that the requested one exists).
- timing probe: the real worker, ``python -m trainer --probe N``, times N optimizer steps
  after warm-up; the epoch time is judged by the runbook's ``display.epoch_minutes`` bands
  (upstream: 9-12 min go, > 15 min investigate) and epochs × epoch time + the final eval
  against the window: fits → pass; fits only after the watchdog's epoch cuts → warn; not
  even the smallest cut fits → fail.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from orchestrator.plan import PROJECT_ROOT, parse_duration
from orchestrator.runbook import Runbook, RunbookError, default_runbook_for, load_runbook
from trainer.config import Config, ConfigError, load_config

GB = 1024**3
STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


@dataclass
class Check:
    name: str
    result: str  # pass | warn | fail
    detail: str
    fix: str = ""


def checkpoint_bytes(cfg: Config) -> int:
    """Estimated size of one checkpoint: encoder + EMA target + predictor in fp32, plus AdamW's
    two moments for the trained parts (about 12·D² parameters per transformer block)."""
    m = cfg.model
    encoder = 12 * m.depth * m.embed_dim**2 + 3 * m.patch_size**2 * m.embed_dim
    p_dim = m.predictor.embed_dim or m.embed_dim
    predictor = 12 * m.predictor.depth * p_dim**2
    return 4 * (2 * encoder + predictor + 2 * (encoder + predictor))


def check_disk(cfg: Config, where: Path) -> Check:
    need = checkpoint_bytes(cfg) * (cfg.checkpoint.keep_last_k + 2) + GB // 2
    probe_dir = where if where.exists() else Path.cwd()
    free = shutil.disk_usage(probe_dir).free
    detail = f"{free / GB:.1f} GB free in {probe_dir}, the night needs ~{need / GB:.1f} GB"
    if free < need:
        return Check("disk", "fail", detail, f"free {(need - free) / GB:.1f} GB or use --state-dir")
    if free < 2 * need:
        return Check("disk", "warn", detail, "less than 2x headroom: free some space")
    return Check("disk", "pass", detail)


def check_memory(rb: Runbook) -> Check:
    avail = psutil.virtual_memory().available / GB
    detail = (
        f"{avail:.1f} GB available; runbook expects ~{rb.memory.good_gb:g} GB, "
        f"ceiling {rb.memory.ceiling_gb:g} GB"
    )
    if avail >= rb.memory.good_gb:
        return Check("memory", "pass", detail)
    fix = "close other programs; the OOM ladder will shrink the micro-batch if needed"
    return Check("memory", "warn" if avail >= rb.memory.good_gb / 2 else "fail", detail, fix)


def check_device(cfg: Config) -> Check:
    from trainer.device import select_device  # imports torch

    try:
        dev = select_device(cfg.device)
    except ConfigError as exc:
        return Check("device", "fail", str(exc), "set device: auto, or install a matching torch")
    detail = f"device: {cfg.device} -> {dev}"
    if dev.type == "cuda":
        import torch

        props = torch.cuda.get_device_properties(dev)
        detail += f" ({props.name}, {props.total_memory / GB:.0f} GB)"
    if dev.type == "cpu" and cfg.device == "auto":
        return Check("device", "warn", detail + " (no CUDA or MPS found)", "expect CPU speed")
    return Check("device", "pass", detail)


def check_dataset(cfg: Config) -> Check:
    from trainer.data import describe
    from trainer.datasets import DataMissingError

    try:
        found = describe(cfg)
    except DataMissingError as exc:
        first = str(exc).splitlines()[0]
        return Check("dataset", "fail", first, f"{exc.dataset} expected at {exc.path}: {exc}")
    except Exception as exc:
        return Check("dataset", "fail", f"{type(exc).__name__}: {exc}", "check data.* paths")
    return Check("dataset", "pass", "; ".join(f"{k}: {v}" for k, v in found.items()))


def run_probe(args: argparse.Namespace, steps: int) -> dict[str, Any]:
    """The worker's ``--probe`` JSON line (raises RuntimeError with the stderr tail)."""
    with tempfile.TemporaryDirectory(prefix="hjepa-preflight-") as run_dir:
        cmd = [sys.executable, "-m", "trainer", "--config", args.config, "--run-dir", run_dir,
               "--probe", str(steps)]  # fmt: skip
        for item in args.overrides:
            cmd += ["--set", item]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=1800)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{") and "ms_per_step" in line:
            return dict(json.loads(line))
    tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"probe exited {out.returncode}: {' | '.join(tail)}")


def judge_timing(probe: dict[str, Any], cfg: Config, rb: Runbook, window_s: float) -> list[Check]:
    epoch_s = float(probe["epoch_seconds"])
    minutes = epoch_s / 60
    band = rb.display.epoch_minutes
    speed = (
        f"{probe['ms_per_step']:.0f} ms/step, {probe['img_per_s']:.0f} img/s, "
        f"{probe['steps_per_epoch']} steps/epoch -> {minutes:.1f} min/epoch on {probe['device']}"
    )
    epoch = Check("epoch time", "pass", speed)
    if minutes > band.warning:
        epoch = Check("epoch time", "fail", speed, f"> {band.warning:g} min: investigate first")
    elif minutes > band.good:
        epoch = Check("epoch time", "warn", speed, f"> {band.good:g} min: may need the full window")
    epochs = cfg.training.epochs
    budget = window_s - rb.final_eval_s
    night_s = epochs * epoch_s + rb.final_eval_s
    detail = (
        f"{epochs} epochs x {minutes:.1f} min + final eval {rb.final_eval_minutes:g} min = "
        f"{night_s / 3600:.2f} h vs window {window_s / 3600:.2f} h"
    )
    fits = int(budget // epoch_s) if epoch_s > 0 else epochs
    if fits >= epochs:
        return [epoch, Check("night length", "pass", detail)]
    cuts = [e for e in rb.ladders.slow.epochs if e <= fits]
    if cuts:
        fix = f"the watchdog will cut to {max(cuts)} epochs; or set training.epochs={fits}"
        return [epoch, Check("night length", "warn", detail, fix)]
    fix = f"only {fits} epochs fit: lower training.epochs, a smaller model, or a longer window"
    return [epoch, Check("night length", "fail", detail, fix)]


def run_checks(args: argparse.Namespace, out: Console) -> list[Check]:
    checks: list[Check] = []
    try:
        cfg = load_config(args.config, list(args.overrides))
    except ConfigError as exc:
        return [Check("config", "fail", str(exc).splitlines()[-1], "fix the config key named")]
    checks.append(Check("config", "pass", f"{args.config} (hash {cfg.hash()})"))
    rb_path = Path(args.runbook) if args.runbook else default_runbook_for(args.config)
    try:
        rb = load_runbook(rb_path)
        checks.append(Check("runbook", "pass", str(rb_path)))
    except RunbookError as exc:
        checks.append(Check("runbook", "fail", str(exc).splitlines()[0], "fix or pass --runbook"))
        rb = Runbook.model_validate({"name": "defaults"})
    checks.append(check_dataset(cfg))
    checks.append(check_disk(cfg, Path(getattr(args, "state_dir", "var"))))
    checks.append(check_memory(rb))
    checks.append(check_device(cfg))
    if checks[2].result == "fail" or checks[-1].result == "fail":
        checks.append(Check("timing probe", "fail", "skipped: dataset or device failed above"))
        return checks
    with out.status(f"timing probe: {args.probe_steps} steps after warm-up..."):
        try:
            probe = run_probe(args, args.probe_steps)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return [*checks, Check("timing probe", "fail", str(exc), "run the worker alone")]
    return checks + judge_timing(probe, cfg, rb, parse_duration(args.window))


def cmd_preflight(args: argparse.Namespace) -> int:
    out = Console()
    try:
        parse_duration(args.window)
    except ValueError as exc:
        out.print(f"[red]--window: {exc}[/]")
        return 2
    checks = run_checks(args, out)
    table = Table(title=f"pre-flight: {args.config}", show_lines=False)
    for col in ("check", "result", "evidence", "fix"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{STYLE[c.result]}]{c.result}[/]", c.detail, c.fix)
    out.print(table)
    failed = [c.name for c in checks if c.result == "fail"]
    out.print("[red]not ready: " + ", ".join(failed) + "[/]" if failed else "[green]ready[/]")
    return 1 if failed else 0
