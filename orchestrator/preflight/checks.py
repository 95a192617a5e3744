"""Preflight's checks, each a :class:`PreflightCheck` (pass / warn / fail, evidence, a one-line
fix), and the one way preflight asks the worker something: :func:`run_worker`.

- disk: free space where the runs go vs the checkpoints kept (``keep_last_k`` + best + one being
  written, each the weights, EMA target and AdamW moments, estimated from the model sizes).
- memory: available RAM vs the runbook's expected use (``memory.good_gb``) and ceiling.
- device and dataset: from the worker's own ``python -m trainer --check`` document
  (:func:`worker_facts`; its shape is in ``trainer/runtime/check.py``), run from the working
  directory as a night runs the worker, so relative data paths resolve the same and torch stays
  out of this process. The device check shows what ``auto`` resolves to (or that the requested
  one exists); the dataset check passes when every training dataset opens, else names the first
  missing one, its expected path and the setting or command that fetches it.
- timing (:func:`judge_timing`): the epoch time from the worker's ``--probe`` against the
  runbook's ``display.epoch_minutes`` bands and the night against the window.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from orchestrator.core.runbook import Runbook
from orchestrator.core.units import GB
from orchestrator.schedule.plan import PROJECT_ROOT
from trainer.config import Config

WORKER_TIMEOUT_S = 1800


@dataclass
class PreflightCheck:
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


def unwritable(directory: Path) -> str | None:
    """Why nothing can be written in ``directory`` (None: a file can be), by trying it: a
    read-only filesystem, a file where a directory belongs, no permission (also for root)."""
    if not directory.is_dir():
        return "not a directory" if directory.exists() else "does not exist"
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        return f"not writable ({exc.strerror or exc})"
    return None


def disk_free(directory: Path) -> int:
    """Free bytes on the filesystem holding ``directory``."""
    return shutil.disk_usage(directory).free


def check_disk(
    cfg: Config, where: Path, free_of: Callable[[Path], int] | None = None
) -> PreflightCheck:
    """Free space where the runs go (``where``, the state dir) vs what a night of ``cfg``
    writes; used by preflight and by ``start``/``run`` before a night is accepted.
    ``free_of`` reads the free bytes (default :func:`disk_free`; tests give a reading)."""
    need = checkpoint_bytes(cfg) * (cfg.checkpoint.keep_last_k + 2) + GB // 2
    probe_dir = where if where.exists() else Path.cwd()
    why = unwritable(probe_dir)
    if why:
        return PreflightCheck("disk", "fail", f"{probe_dir}: {why}", "give a writable --state-dir")
    free = (free_of or disk_free)(probe_dir)
    detail = f"{free / GB:.1f} GB free in {probe_dir}, the night needs ~{need / GB:.1f} GB"
    if free < need:
        return PreflightCheck(
            "disk", "fail", detail, f"free {(need - free) / GB:.1f} GB or use --state-dir"
        )
    if free < 2 * need:
        return PreflightCheck("disk", "warn", detail, "less than 2x headroom: free some space")
    return PreflightCheck("disk", "pass", detail)


def check_memory(rb: Runbook) -> PreflightCheck:
    avail = psutil.virtual_memory().available / GB
    detail = (
        f"{avail:.1f} GB available; runbook expects ~{rb.memory.good_gb:g} GB, "
        f"host ceiling {rb.memory.ceiling_gb:g} GB"
    )
    if avail >= rb.memory.good_gb:
        return PreflightCheck("memory", "pass", detail)
    fix = "close other programs; the OOM ladder will shrink the micro-batch if needed"
    return PreflightCheck(
        "memory", "warn" if avail >= rb.memory.good_gb / 2 else "fail", detail, fix
    )


def check_power() -> PreflightCheck:
    """On battery, or no way to hold off sleep for the night: warn (``core/awake.py``)."""
    from orchestrator.core.awake import power_warnings

    warnings = power_warnings()
    if not warnings:
        return PreflightCheck("power", "pass", "sleep is held off while a night runs")
    detail = "; ".join(w.split(" — ")[0] for w in warnings)
    return PreflightCheck("power", "warn", detail, " | ".join(w.split(" — ")[1] for w in warnings))


# --------------------------------------------------------------------------------------------
# asking the worker
def run_worker(
    config: str,
    overrides: list[str],
    mode: list[str],
    cwd: str | Path,
    command: list[str] | None = None,
    stream_stderr: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``python -m trainer --config CONFIG MODE... --set ITEM...`` run to completion in ``cwd``,
    output captured; the project root is on PYTHONPATH so the worker imports from any cwd.
    ``command`` replaces ``python -m trainer`` (the launcher around it, for several ranks).
    ``stream_stderr``: the worker's stderr goes to ours (a download's progress bar) instead.
    Raises subprocess.TimeoutExpired after ``WORKER_TIMEOUT_S``."""
    cmd = [*(command or [sys.executable, "-m", "trainer"])]
    cmd += ["--config", str(Path(config).resolve()), *mode]
    for item in overrides:
        cmd += ["--set", item]
    old = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT) + (os.pathsep + old if old else "")}
    return subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=None if stream_stderr else subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
        timeout=None if stream_stderr else WORKER_TIMEOUT_S,  # a big download takes its time
    )


def last_json(stdout: str, key: str) -> dict[str, Any] | None:
    """The last stdout line that is a JSON object holding ``key``."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{") and f'"{key}"' in line:
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                return doc
    return None


def tail(out: subprocess.CompletedProcess[str], lines: int = 3) -> str:
    return " | ".join((out.stderr or out.stdout).strip().splitlines()[-lines:])


def worker_facts(config: str, overrides: list[str]) -> dict[str, Any]:
    """The worker's ``--check`` document for the config (see ``trainer/runtime/check.py``); when the
    worker printed none, ``{"ok": False, "error": why}``."""
    try:
        out = run_worker(config, overrides, ["--check"], cwd=Path.cwd())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "error": f"python -m trainer --check: {exc}"}
    doc = last_json(out.stdout, "ok")
    if doc is None:
        why = f"python -m trainer --check exited {out.returncode}: {tail(out)}"
        return {"ok": False, "error": why}
    return doc


def _why(facts: dict[str, Any], what: str) -> str:
    """The last line of why a --check document holds no ``what``."""
    why = str(facts.get("error") or f"the worker's --check reported no {what}").strip()
    return why.splitlines()[-1].strip()


def check_device(facts: dict[str, Any], requested: str) -> PreflightCheck:
    dev = facts.get("device")
    if not isinstance(dev, dict):
        return PreflightCheck(
            "device", "fail", _why(facts, "device"), "run python -m trainer --check"
        )
    if dev.get("error"):
        fix = "set device: auto, or install a matching torch"
        return PreflightCheck("device", "fail", str(dev["error"]), fix)
    detail = f"device: {requested} -> {dev['device']}"
    if dev["type"] == "cuda":
        detail += f" ({dev['name']}, {(dev['memory_bytes'] or 0) / GB:.0f} GB)"
    ranks = dev.get("ranks") or {}
    if int(ranks.get("world_size") or 1) > 1:
        detail += (
            f"; {ranks['nproc_per_node']} process(es) here on {', '.join(ranks['devices'])}, "
            f"world size {ranks['world_size']} ({ranks['nnodes']} node(s))"
        )
    if dev["type"] == "cpu" and requested == "auto":
        return PreflightCheck(
            "device", "warn", detail + " (no CUDA or MPS found)", "expect CPU speed"
        )
    return PreflightCheck("device", "pass", detail)


def check_dataset(facts: dict[str, Any]) -> PreflightCheck:
    rows = facts.get("datasets")
    if not isinstance(rows, list):
        return PreflightCheck("dataset", "fail", _why(facts, "datasets"), "check data.* paths")
    fetch = [r for r in rows if r["status"] == "missing" and r.get("downloadable")]
    if fetch and all(r["status"] == "ok" or r in fetch for r in rows):
        names = ", ".join(str(r["name"]) for r in fetch)
        return PreflightCheck(
            "dataset",
            "warn",
            f"{names} not downloaded yet (download: true)",
            "`hjepa-night start`/`run` downloads it before the night, or now: python -m trainer"
            " --check --fetch --config FILE",
        )
    for row in rows:
        if row["status"] == "missing":
            first = row["message"].splitlines()[0]
            fix = f"{row['name']} expected at {row['path']}: {row['message']}"
            return PreflightCheck("dataset", "fail", first, fix)
        if row["status"] != "ok":
            return PreflightCheck("dataset", "fail", row["message"], "check data.* paths")
    return PreflightCheck(
        "dataset", "pass", "; ".join(f"{r['key']}: {r['description']}" for r in rows)
    )


# --------------------------------------------------------------------------------------------
# timing
def judge_timing(
    probe: dict[str, Any], cfg: Config, rb: Runbook, window_s: float
) -> list[PreflightCheck]:
    epoch_s = float(probe["epoch_seconds"])
    minutes = epoch_s / 60
    band = rb.display.epoch_minutes
    speed = (
        f"{probe['ms_per_step']:.0f} ms/step, {probe['img_per_s']:.0f} img/s, "
        f"{probe['steps_per_epoch']} steps/epoch -> {minutes:.1f} min/epoch on {probe['device']}"
    )
    epoch = PreflightCheck("epoch time", "pass", speed)
    if minutes > band.warning:
        epoch = PreflightCheck(
            "epoch time", "fail", speed, f"> {band.warning:g} min: investigate first"
        )
    elif minutes > band.good:
        epoch = PreflightCheck(
            "epoch time", "warn", speed, f"> {band.good:g} min: may need the full window"
        )
    epochs = cfg.training.epochs
    budget = window_s - rb.final_eval_s
    night_s = epochs * epoch_s + rb.final_eval_s
    detail = (
        f"{epochs} epochs x {minutes:.1f} min + final eval {rb.final_eval_minutes:g} min = "
        f"{night_s / 3600:.2f} h vs window {window_s / 3600:.2f} h"
    )
    fits = int(budget // epoch_s) if epoch_s > 0 else epochs
    if fits >= epochs:
        return [epoch, PreflightCheck("night length", "pass", detail)]
    cuts = [e for e in rb.ladders.slow.epochs if e <= fits]
    if cuts:
        fix = f"the watchdog will cut to {max(cuts)} epochs; or set training.epochs={fits}"
        return [epoch, PreflightCheck("night length", "warn", detail, fix)]
    fix = f"only {fits} epochs fit: lower training.epochs, a smaller model, or a longer window"
    return [epoch, PreflightCheck("night length", "fail", detail, fix)]
