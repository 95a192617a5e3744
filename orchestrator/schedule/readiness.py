"""Before a plan is accepted: can every night start? Checked at ``start`` (and ``run``) time.

    results = check_plan(plan)              # prints progress and one verdict line per night
    refused = [r for r in results if r.refusal]

For each night: its config loads with the night's overrides; the state dir's disk holds what
the night writes (its kept checkpoints and best.pt: preflight's :func:`check_disk`); the
device resolves; every
training dataset is there, or is downloaded *now* (``python -m trainer --check --fetch``,
its progress bar and "downloaded N MB into DIR" passed through to the terminal). A dataset that
is missing and cannot be downloaded refuses the plan with the fix — unless the night's runbook
has a ``dataset_fallback`` whose datasets are there (or download); then the night is accepted
and the verdict says plainly what it will train on instead, and how to get the missing data.

A night on synthetic data with ``device: auto`` or ``cpu`` needs no worker: the config is loaded
here (the demo plan starts without a torch import). Worker checks run in the working directory,
as the night's worker does, so relative data paths resolve the same.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from orchestrator.core.runbook import RunbookError, load_runbook
from orchestrator.night.history import override_args
from orchestrator.preflight.checks import check_disk, last_json, run_worker, tail
from trainer.config import ConfigError, load_config


@dataclass
class NightReadiness:
    """One night's verdict: ``refusal`` (why the plan cannot be accepted, with the fix) or
    ``lines`` (what was found, downloaded, or will be used instead)."""

    index: int
    name: str
    lines: list[str] = field(default_factory=list)
    refusal: str | None = None
    fallback_datasets: list[str] | None = None


def _worker_check(config: Path, sets: list[str]) -> dict[str, Any]:
    """The worker's ``--check --fetch`` document; the download progress goes to our stderr."""
    try:
        out = run_worker(str(config), sets, ["--check", "--fetch"], Path.cwd(), stream_stderr=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "error": f"python -m trainer --check: {exc}"}
    doc = last_json(out.stdout, "ok")
    if doc is None:
        return {"ok": False, "error": f"python -m trainer --check exited {out.returncode}"
                f" {tail(out)}"}  # fmt: skip
    return doc


def _problems(doc: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """(a config or device problem, the dataset rows that are not ok) of a --check document."""
    if "error" in doc and "device" not in doc:
        return str(doc["error"]), []
    dev = doc.get("device") or {}
    if dev.get("error"):
        return f"device {dev.get('requested')!r}: {dev['error']}", []
    return None, [r for r in doc.get("datasets", []) if r.get("status") != "ok"]


def _names(doc: dict[str, Any]) -> str:
    return "+".join(str(r["name"]) for r in doc.get("datasets", [])) or "?"


def check_night(
    index: int,
    name: str,
    config: Path,
    runbook: Path | None,
    sets: list[str],
    state_dir: Path = Path("var"),
    free_of: Callable[[Path], int] | None = None,
) -> NightReadiness:
    """The verdict for one night (see the module docstring)."""
    res = NightReadiness(index, name)
    label = f"night {index + 1} {name}"
    try:
        cfg = load_config(config, sets)
    except ConfigError as exc:
        res.refusal = f"{label}: {exc}"
        return res
    disk = check_disk(cfg, state_dir, free_of)
    if disk.result == "fail":
        res.refusal = f"{label}: not enough disk: {disk.detail}; {disk.fix}"
        return res
    if disk.result == "warn":
        res.lines.append(f"warning: {label}: {disk.detail} ({disk.fix})")
    if cfg.device in ("auto", "cpu") and all(d.name == "synthetic" for d in cfg.data.datasets):
        res.lines.append(f"{label}: ready (synthetic data, device {cfg.device})")
        return res
    doc = _worker_check(config, sets)
    problem, missing = _problems(doc)
    if problem:
        res.refusal = f"{label}: {problem}"
        return res
    dev = (doc.get("device") or {}).get("device")
    for row in doc.get("datasets", []):
        if row.get("fetched"):
            res.lines.append(f"{label}: {row['key']} downloaded: {row['description']}")
    if not missing:
        res.lines.append(f"{label}: ready ({_names(doc)} on {dev})")
        return res
    why = "; ".join(str(r["message"]) for r in missing)
    rung = None
    if runbook is not None:
        try:
            rung = load_runbook(runbook).ladders.dataset_fallback
        except RunbookError as exc:
            res.refusal = f"{label}: {exc}"
            return res
    if rung is None:
        res.refusal = f"{label}: {why}"
        return res
    alt = _worker_check(config, sets + override_args(rung.overrides))
    alt_problem, alt_missing = _problems(alt)
    if alt_problem or alt_missing:
        also = alt_problem or "; ".join(str(r["message"]) for r in alt_missing)
        res.refusal = f"{label}: {why}; its dataset fallback cannot run either: {also}"
        return res
    for row in alt.get("datasets", []):
        if row.get("fetched"):
            res.lines.append(f"{label}: {row['key']} downloaded: {row['description']}")
    res.fallback_datasets = [str(r["name"]) for r in alt.get("datasets", [])]
    lost = "+".join(str(r["name"]) for r in missing)
    res.lines.append(
        f"{label}: {lost} missing, so this night will train on {_names(alt)} instead (the"
        f" runbook's dataset fallback) unless the data is in place before it starts: {why}"
    )
    return res


def check_plan(
    plan: Any, out: IO[str] | None = None, state_dir: Path = Path("var")
) -> list[NightReadiness]:
    """Every night of ``plan`` (an :class:`orchestrator.schedule.plan.Plan`) checked in order,
    its runs written under ``state_dir``; each verdict line is printed to ``out`` (stderr) as
    it is known."""
    from orchestrator.schedule.plan import project_path

    out = out or sys.stderr
    results = []
    for i, spec in enumerate(plan.nights):
        out.write(f"checking night {i + 1} {spec.name} ({spec.config}) ...\n")
        out.flush()
        res = check_night(
            i,
            spec.name,
            project_path(spec.config),
            project_path(spec.runbook),
            override_args(spec.overrides),
            state_dir,
        )
        for line in res.lines + ([f"REFUSED {res.refusal}"] if res.refusal else []):
            out.write(line + "\n")
        out.flush()
        results.append(res)
    from orchestrator.core.awake import power_warnings

    for warning in power_warnings():
        out.write(f"warning: {warning}\n")
    return results


def refusal_text(results: list[NightReadiness]) -> str | None:
    """One message for every refused night, or None when all can start."""
    refused = [r.refusal for r in results if r.refusal]
    if not refused:
        return None
    return "the plan cannot start: " + " | ".join(refused)
