"""``hjepa-night preflight``: the checklist to run before going to bed, and the night it plans.

    hjepa-night preflight --config configs/overnight_training_conservative.yaml [--runbook FILE]
        [--set key=value ...] [--probe-steps 5] [--window 8h] [--state-dir var]

Each check prints pass / warn / fail with its evidence and a one-line fix; exit 0 when nothing
failed, 1 otherwise. The checks (upstream's pre-flight list, with numbers from this machine):

- config: the worker config (with ``--set``) validates; runbook: it loads (default: the one
  ``orchestrator.core.runbook.default_runbook_for`` picks for the config).
- dataset, disk, memory, device: ``orchestrator/preflight_checks.py`` (dataset and device are
  the worker's own ``python -m trainer --check``).
- timing probe: the real worker, ``python -m trainer --probe N``, times N optimizer steps
  after warm-up, over the micro-batches the effective batch allows
  (``orchestrator/preflight/probes.py``), whose ``plan_night`` fits the epochs into the window
  (``orchestrator/preflight/fit.py``); the epoch time
  is judged by the runbook's ``display.epoch_minutes`` bands (upstream: 9-12 min go, > 15 min
  investigate) and epochs × epoch time + the final eval against the window: fits → pass; fits
  only after the watchdog's epoch cuts → warn; not even the smallest cut fits → fail.
- feature costs: at the chosen micro-batch one worker process times each optional feature on
  and off (``orchestrator/preflight/features.py``); the table is printed and the record goes
  into ``STATE_DIR/preflight.jsonl`` whether or not ``--apply`` writes the plan.

Here: the command (:func:`cmd_preflight`, the table, ``--apply``) and ``start --fit``
(:func:`fit_plan`). The orchestrator asks the worker through its
command line only; it imports nothing from ``trainer`` but the config and events contracts.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.core.durations import parse_window
from orchestrator.core.runbook import Runbook, RunbookError, default_runbook_for, load_runbook
from orchestrator.preflight import probes
from orchestrator.preflight.checks import (
    PreflightCheck,
    check_dataset,
    check_device,
    check_disk,
    check_memory,
    check_power,
    judge_timing,
    worker_facts,
)
from orchestrator.preflight.fit import (
    FIT_LOG,
    ApplyError,
    NightFit,
    apply_overrides,
    record_fit,
)
from orchestrator.preflight.table import features_table, fit_table
from orchestrator.schedule.plan import project_path
from trainer.config import ConfigError, load_config

STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def run_checks(args: argparse.Namespace, out: Console) -> list[PreflightCheck]:
    checks: list[PreflightCheck] = []
    try:
        cfg = load_config(args.config, list(args.overrides))
    except ConfigError as exc:
        return [
            PreflightCheck("config", "fail", str(exc).splitlines()[-1], "fix the config key named")
        ]
    checks.append(PreflightCheck("config", "pass", f"{args.config} (hash {cfg.hash()})"))
    rb_path = Path(args.runbook) if args.runbook else default_runbook_for(args.config)
    try:
        rb = load_runbook(rb_path)
        checks.append(PreflightCheck("runbook", "pass", str(rb_path)))
    except RunbookError as exc:
        checks.append(
            PreflightCheck("runbook", "fail", str(exc).splitlines()[0], "fix or pass --runbook")
        )
        rb = Runbook.model_validate({"name": "defaults"})
    facts = worker_facts(args.config, list(args.overrides))  # the worker's --check
    checks.append(check_dataset(facts))
    checks.append(check_disk(cfg, Path(getattr(args, "state_dir", "var"))))
    checks.append(check_memory(rb))
    checks.append(check_power())
    checks.append(check_device(facts, cfg.device))
    if checks[2].result == "fail" or checks[-1].result == "fail":
        checks.append(
            PreflightCheck("timing probe", "fail", "skipped: dataset or device failed above")
        )
        return checks
    window_s = parse_window(args.window)
    with out.status("timing probe...") as status:
        try:
            fit, why = probes.plan_night(args, cfg, rb, window_s, status)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return [
                *checks,
                PreflightCheck("timing probe", "fail", str(exc), "run the worker alone"),
            ]
    if fit is None:
        return [
            *checks,
            PreflightCheck("batch fit", "fail", why, "a smaller model or a higher ceiling"),
        ]
    args.fit = fit
    planned = cfg.model_copy(
        update={"training": cfg.training.model_copy(update={"epochs": fit.epochs})}
    )
    return checks + judge_timing(fit.probe, planned, rb, window_s)


def cmd_preflight(args: argparse.Namespace) -> int:
    out = Console()
    try:
        parse_window(args.window)
    except ValueError as exc:
        out.print(f"[red]--window: {exc}[/]")
        return 2
    args.fit = None
    checks = run_checks(args, out)
    table = Table(title=f"pre-flight: {args.config}", show_lines=False)
    for col in ("check", "result", "evidence", "fix"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{STYLE[c.result]}]{c.result}[/]", c.detail, c.fix)
    out.print(table)
    fit: NightFit | None = args.fit
    if fit is not None:
        out.print(fit_table(fit, load_config(args.config, list(args.overrides)), _runbook(args)))
        costs = features_table(fit)
        if costs is not None:
            out.print(costs)
    failed = [c.name for c in checks if c.result == "fail"]
    out.print("[red]not ready: " + ", ".join(failed) + "[/]" if failed else "[green]ready[/]")
    if args.apply is not None and fit is not None and not failed:
        target = args.apply or str(Path(args.state_dir) / "state.json")
        try:
            names = apply_overrides(target, args.config, fit.overrides())
        except ApplyError as exc:
            out.print(f"[red]{exc}[/]")
            return 2
        state_dir = Path(target).parent if target.endswith(".json") else Path(args.state_dir)
        record_fit(state_dir, args.config, fit, target)
        sets = " ".join(f"{k}={v}" for k, v in fit.overrides().items())
        out.print(f"applied to {target} ({', '.join(names)}): {sets}")
    elif fit is not None:  # not applied: still the evidence of the feature costs
        state_dir = Path(getattr(args, "state_dir", "var"))
        try:
            record_fit(state_dir, args.config, fit, None)
            out.print(f"recorded in {state_dir / FIT_LOG} (not applied)")
        except OSError as exc:
            out.print(f"[yellow]not recorded: {state_dir / FIT_LOG}: {exc.strerror or exc}[/]")
    return 1 if failed else 0


def _runbook(args: argparse.Namespace) -> Runbook:
    path = Path(args.runbook) if args.runbook else default_runbook_for(args.config)
    try:
        return load_runbook(path)
    except RunbookError:
        return Runbook.model_validate({"name": "defaults"})


def fit_plan(args: argparse.Namespace) -> str:
    """``start --plan P --fit``: plan every night of P on this machine and return the path of a
    fitted copy (``STATE_DIR/plans/<name>-fitted.yaml``, the nights' base overrides extended
    with micro-batch, accumulation and epochs) for the daemon to run. A state dir already
    holding this plan is resumed as it is (the fit of a started plan is already in its state).
    Fault-injection overrides (``faults.*``) are left out of the probes: they test the
    fallbacks, they are not the machine. Raises ApplyError when a night cannot be fitted."""
    from orchestrator.core.state import StateStore
    from orchestrator.schedule.plan import load_plan, resolve_plan_path

    plan_path = resolve_plan_path(args.plan)
    plan = load_plan(plan_path)
    state = StateStore(args.state_dir).load(set_aside=False)
    if state.plan is not None:
        print(f"--fit: {args.state_dir} already holds plan {state.plan.name!r}; resuming as is")
        return str(plan_path)
    out = Console()
    fitted = Path(args.state_dir) / "plans" / f"{plan.name}-fitted.yaml"
    fitted.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plan_path, fitted)
    for night in plan.nights:
        sets = [f"{k}={v}" for k, v in night.overrides.items() if not k.startswith("faults.")]
        ns = argparse.Namespace(config=night.config, overrides=sets, probe_steps=args.probe_steps,
                                margin=args.margin)  # fmt: skip
        cfg = load_config(project_path(night.config), sets)
        rb = load_runbook(project_path(night.runbook))
        window_s = night.window_s
        with out.status(f"fitting night {night.name!r}...") as status:
            fit, why = probes.plan_night(ns, cfg, rb, window_s, status)
        if fit is None:
            raise ApplyError(f"--fit: night {night.name!r}: {why}")
        out.print(fit_table(fit, cfg, rb))
        costs = features_table(fit)
        if costs is not None:
            out.print(costs)
        _apply_night(fitted, night.name, fit.overrides())
        record_fit(args.state_dir, night.config, fit, str(fitted))
    out.print(f"fitted plan: {fitted}")
    return str(fitted)


def _apply_night(plan_file: Path, name: str, overrides: dict[str, Any]) -> None:
    from orchestrator.core.userfile import edit_yaml

    def edit(doc: Any) -> bool:
        for night in doc["nights"]:
            if night.get("name") == name:
                if not isinstance(night.get("overrides"), dict):
                    night["overrides"] = {}
                night["overrides"].update(overrides)
        return True

    edit_yaml(plan_file, edit, backup=False)
