"""The timing probes behind ``preflight`` and ``start --fit``, and the night they plan.

    fit, why = plan_night(args, cfg, runbook, window_s)   # probes, micro-batch, epochs

:func:`run_probe` runs the real worker's ``--probe N`` (under the launcher with several
processes); :func:`probe_batches` grows the micro-batch over the effective batch's divisors up
to the device or host ceiling; :func:`plan_night` chooses the micro-batch (and whether gradient
checkpointing stays on) and fits the epochs into the window (``orchestrator/preflight/fit.py``),
and :func:`probe_features` times, in one more worker process at the chosen micro-batch, the
planned config and each optional feature switched the other way
(``orchestrator/preflight/features.py``; flash attention's ratio is the speed-up criterion).
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from orchestrator.core.launcher import rdzv_id, worker_command
from orchestrator.core.runbook import Runbook
from orchestrator.preflight.checks import GB, checkpoint_bytes, last_json, run_worker, tail
from orchestrator.preflight.features import (
    FeatureCost,
    costs_from_probe,
    feature_toggles,
    peak_bytes,
    variant_item,
)
from orchestrator.preflight.fit import (
    CHECKPOINTING,
    BatchTrial,
    NightFit,
    breaks,
    choose_micro,
    estimate_checkpoint_s,
    estimate_eval_s,
    fit_epochs,
    night_seconds,
    prefer_checkpointing,
    probe_ceiling,
    probe_order,
)
from orchestrator.preflight.table import trials_text
from orchestrator.schedule.plan import PROJECT_ROOT
from trainer.config import Config, load_config
from trainer.events import EXIT_CODE_OF_KIND


def run_probe(
    args: argparse.Namespace,
    steps: int,
    extra: list[str] | None = None,
    variants: list[str] | None = None,
) -> dict[str, Any]:
    """The worker's ``--probe`` JSON line, with ``extra`` ``--set`` items after the user's and
    each of ``variants`` as a ``--probe-variant`` (timed in the same process, under
    ``"variants"``).

    With several processes on this node (``distributed``) the probe runs under the launcher on
    all of them (a multi-node config probes this node's processes alone: nnodes=1).
    An OOM in the worker (exit code 10) returns ``{"oom": True}``; any other failure raises
    RuntimeError with the stderr tail."""
    with tempfile.TemporaryDirectory(prefix="hjepa-preflight-") as run_dir:
        mode = ["--run-dir", run_dir, "--probe", str(steps)]
        for item in variants or []:
            mode += ["--probe-variant", item]
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
    fit.features = probe_features(args, cfg, micro, checkpointing, status)
    return fit, ""


def probe_features(
    args: argparse.Namespace,
    cfg: Config,
    micro: int,
    checkpointing: bool | None,
    status: Any = None,
) -> list[FeatureCost]:
    """Each optional feature the recipe turns on, on and off at the chosen micro-batch: ONE
    worker process times the planned config and every variant (``trainer/train/modes.py``). [] when
    the recipe turns none on."""
    eff = cfg.effective_batch
    sets = [f"data.batch_size={micro}", f"training.accumulation_steps={eff // micro}"]
    if checkpointing is False:
        sets.append(f"{CHECKPOINTING}=false")
    planned = load_config(args.config, [*args.overrides, *sets])
    toggles = feature_toggles(cfg, planned)
    if not toggles:
        return []
    if status is not None:
        names = ", ".join(f for f, _, _ in toggles)
        status.update(f"feature probe at micro-batch {micro}: each of {names} on and off...")
    items = [variant_item(key, on) for _, key, on in toggles]
    res = run_probe(args, args.probe_steps, sets, items)
    if res.get("oom"):  # the planned config itself: the batch probes said it fits
        res = {"error": "the planned config ran out of memory in the feature probe"}
    return costs_from_probe(res, toggles)


def _at(micro: int | None, probes: dict[str, dict[str, Any]]) -> tuple[int | None, float | None]:
    """(micro, its measured ms per optimizer step) for ``prefer_checkpointing``."""
    if micro is None:
        return None, None
    return micro, float(probes[str(micro)]["ms_per_step"])
