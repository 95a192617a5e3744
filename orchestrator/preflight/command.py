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
  after warm-up, over the micro-batches the effective batch allows (:func:`probe_batches`);
  :func:`plan_night` fits the epochs into the window (``orchestrator/fit.py``); the epoch time
  is judged by the runbook's ``display.epoch_minutes`` bands (upstream: 9-12 min go, > 15 min
  investigate) and epochs × epoch time + the final eval against the window: fits → pass; fits
  only after the watchdog's epoch cuts → warn; not even the smallest cut fits → fail.

Here: the command (:func:`cmd_preflight`, the table, ``--apply``), the batch probe and the night
plan, and ``start --fit`` (:func:`fit_plan`). The orchestrator asks the worker through its
command line only; it imports nothing from ``trainer`` but the config and events contracts.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.core.durations import parse_window
from orchestrator.core.launcher import rdzv_id, worker_command
from orchestrator.core.runbook import Runbook, RunbookError, default_runbook_for, load_runbook
from orchestrator.preflight.checks import (
    GB,
    PreflightCheck,
    check_dataset,
    check_device,
    check_disk,
    check_memory,
    check_power,
    checkpoint_bytes,
    judge_timing,
    last_json,
    run_worker,
    tail,
    worker_facts,
)
from orchestrator.preflight.fit import (
    CHECKPOINTING,
    FLASH,
    ApplyError,
    BatchTrial,
    NightFit,
    apply_overrides,
    breaks,
    choose_micro,
    estimate_checkpoint_s,
    estimate_eval_s,
    fit_epochs,
    night_seconds,
    prefer_checkpointing,
    probe_ceiling,
    probe_order,
    record_fit,
)
from orchestrator.preflight.table import fit_table, trials_text
from orchestrator.schedule.plan import PROJECT_ROOT, project_path
from trainer.config import Config, ConfigError, load_config
from trainer.events import EXIT_CODE_OF_KIND

STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def run_probe(
    args: argparse.Namespace, steps: int, extra: list[str] | None = None
) -> dict[str, Any]:
    """The worker's ``--probe`` JSON line, with ``extra`` ``--set`` items after the user's.

    With several processes on this node (``distributed``) the probe runs under the launcher on
    all of them (a multi-node config probes this node's processes alone: nnodes=1).
    An OOM in the worker (exit code 10) returns ``{"oom": True}``; any other failure raises
    RuntimeError with the stderr tail."""
    with tempfile.TemporaryDirectory(prefix="hjepa-preflight-") as run_dir:
        mode = ["--run-dir", run_dir, "--probe", str(steps)]
        sets = [*args.overrides, *(extra or [])]
        cfg = load_config(args.config, sets)
        here = cfg.distributed.model_copy(update={"nnodes": 1, "node_rank": 0})
        if here.nnodes != cfg.distributed.nnodes:
            sets += ["distributed.nnodes=1", "distributed.node_rank=0"]
        command = worker_command(here, rdzv_id(cfg))
        out = run_worker(args.config, sets, mode, cwd=PROJECT_ROOT, command=command)
    probe = last_json(out.stdout, "ms_per_step")
    if probe is not None:
        return probe
    if out.returncode == EXIT_CODE_OF_KIND["oom"]:
        return {"oom": True}
    raise RuntimeError(f"probe exited {out.returncode}: {tail(out)}")


def total_bytes(probe: dict[str, Any]) -> int | None:
    """The device's own memory a probe reports (CUDA, MPS; None on a CPU)."""
    total = (probe.get("memory") or {}).get("total")
    return int(total) if isinstance(total, int | float) and total > 0 else None


def peak_bytes(probe: dict[str, Any]) -> int | None:
    """Peak device memory of a probe (CUDA peak allocated; MPS driver; CPU process RSS)."""
    mem = probe.get("memory") or {}
    for key in ("peak", "driver", "allocated"):
        if isinstance(mem.get(key), int | float):
            return int(mem[key])
    return None


def probe_batches(
    args: argparse.Namespace,
    cfg: Config,
    rb: Runbook,
    status: Any = None,
    extra: list[str] | None = None,
) -> tuple[list[BatchTrial], dict[str, dict[str, Any]]]:
    """Grow the micro-batch over the effective batch's divisors until an OOM or the memory
    ceiling (device or host: :func:`probe_ceiling`); walk down when the recipe's own micro-batch
    breaks. Returns the trials and the probe JSON per micro-batch that ran. ``extra``: more
    ``--set`` items for every probe."""
    eff = cfg.effective_batch
    grow, shrink = probe_order(cfg.data.batch_size, eff)
    trials: list[BatchTrial] = []
    probes: dict[str, dict[str, Any]] = {}

    def one(micro: int) -> BatchTrial:
        if status is not None:
            how = " without checkpointing" if extra else ""
            status.update(
                f"timing probe: micro-batch {micro} x {eff // micro}{how}, "
                f"{args.probe_steps} steps after warm-up..."
            )
        sets = [f"data.batch_size={micro}", f"training.accumulation_steps={eff // micro}"]
        sets += extra or []
        res = run_probe(args, args.probe_steps, sets)
        if res.get("oom"):
            trial = BatchTrial(micro, None, oom=True)
        else:
            probes[str(micro)] = res
            trial = BatchTrial(
                micro,
                peak_bytes(res),
                ms_per_step=float(res["ms_per_step"]),
                total=total_bytes(res),
            )
        trials.append(trial)
        return trial

    for micro in grow:
        if breaks(one(micro), probe_ceiling(rb.memory, trials)):
            break
    if choose_micro(trials, probe_ceiling(rb.memory, trials), args.margin) is None:
        for micro in shrink:
            trial = one(micro)
            if choose_micro([trial], probe_ceiling(rb.memory, trials), args.margin) is not None:
                break
    return trials, probes


def plan_night(
    args: argparse.Namespace, cfg: Config, rb: Runbook, window_s: float, status: Any = None
) -> tuple[NightFit | None, str]:
    """Probe, choose the micro-batch (and whether gradient checkpointing stays on, see
    ``orchestrator/preflight/fit.py``), fit the epochs. (None, why) when no micro-batch fits."""
    checkpointing: bool | None = None
    trials_c: list[BatchTrial] = []
    if cfg.model.use_gradient_checkpointing:
        trials, probes = probe_batches(args, cfg, rb, status, [f"{CHECKPOINTING}=false"])
        micro = choose_micro(trials, probe_ceiling(rb.memory, trials), args.margin)
        checkpointing = False
        if micro is None or micro < cfg.data.batch_size:
            trials_c, probes_c = probe_batches(args, cfg, rb, status)
            ceiling_c = probe_ceiling(rb.memory, trials + trials_c)
            micro_c = choose_micro(trials_c, ceiling_c, args.margin)
            if prefer_checkpointing(_at(micro, probes), _at(micro_c, probes_c)):
                trials, trials_c = trials_c, trials
                probes, micro, checkpointing = probes_c, micro_c, True
    else:
        trials, probes = probe_batches(args, cfg, rb, status)
        micro = choose_micro(trials, probe_ceiling(rb.memory, trials), args.margin)
    if micro is None:
        seen = trials_text(trials)
        ceiling = probe_ceiling(rb.memory, trials + trials_c) / GB
        return None, f"no micro-batch fits under {ceiling:.1f} GB ({seen})"
    probe = probes[str(micro)]
    epoch_s = float(probe["epoch_seconds"])
    ev = cfg.evaluation
    eval_s = estimate_eval_s(
        float(probe["img_per_s"]),
        ev.max_train_samples + ev.max_test_samples,
        float(probe.get("linear_probe_bound_s", 0.0)),
    )
    ckpt_s = estimate_checkpoint_s(checkpoint_bytes(cfg))
    epochs = fit_epochs(
        recipe_epochs=cfg.training.epochs,
        epoch_s=epoch_s,
        eval_s=eval_s,
        eval_every=ev.eval_frequency,
        checkpoint_s=ckpt_s,
        window_s=window_s,
        final_eval_s=rb.final_eval_s,
        margin=args.margin,
    )
    eff = cfg.effective_batch
    night_s = night_seconds(epochs, epoch_s, eval_s, ev.eval_frequency, ckpt_s, rb.final_eval_s)
    fit = NightFit(
        recipe_micro=cfg.data.batch_size,
        recipe_accum=cfg.training.accumulation_steps,
        recipe_epochs=cfg.training.epochs,
        micro=micro,
        accum=eff // micro,
        epochs=epochs,
        epoch_s=epoch_s,
        eval_s=eval_s,
        checkpoint_s=ckpt_s,
        night_s=night_s,
        window_s=window_s,
        trials=trials,
        probe=probe,
        checkpointing=checkpointing,
        trials_checkpointed=trials_c,
    )
    if cfg.model.use_flash_attention:
        fit.flash_off = probe_flash_off(args, cfg, micro, checkpointing, status)
    return fit, ""


def probe_flash_off(
    args: argparse.Namespace,
    cfg: Config,
    micro: int,
    checkpointing: bool | None,
    status: Any = None,
) -> BatchTrial:
    """One probe at the chosen micro-batch with flash attention off (the speed-up criterion)."""
    if status is not None:
        status.update(f"timing probe: micro-batch {micro} without flash attention...")
    eff = cfg.effective_batch
    sets = [
        f"data.batch_size={micro}",
        f"training.accumulation_steps={eff // micro}",
        f"{FLASH}=false",
    ]
    if checkpointing is False:
        sets.append(f"{CHECKPOINTING}=false")
    res = run_probe(args, args.probe_steps, sets)
    if res.get("oom"):
        return BatchTrial(micro, None, oom=True)
    return BatchTrial(micro, peak_bytes(res), ms_per_step=float(res["ms_per_step"]))


def _at(micro: int | None, probes: dict[str, dict[str, Any]]) -> tuple[int | None, float | None]:
    """(micro, its measured ms per optimizer step) for ``prefer_checkpointing``."""
    if micro is None:
        return None, None
    return micro, float(probes[str(micro)]["ms_per_step"])


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
            fit, why = plan_night(args, cfg, rb, window_s, status)
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
            fit, why = plan_night(ns, cfg, rb, window_s, status)
        if fit is None:
            raise ApplyError(f"--fit: night {night.name!r}: {why}")
        out.print(fit_table(fit, cfg, rb))
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
