"""The tables ``preflight`` prints: what the recipe asks, what fits here, the projected night;
and what each optional feature costs at the planned micro-batch."""

from __future__ import annotations

from rich.table import Table

from orchestrator.core.runbook import Runbook
from orchestrator.preflight.checks import GB
from orchestrator.preflight.features import COLUMNS
from orchestrator.preflight.fit import BatchTrial, NightFit, night_seconds
from trainer.config import Config


def _gb(n: float | None) -> str:
    return "N/A" if n is None else f"{n / GB:.2f} GB"


def fit_table(fit: NightFit, cfg: Config, rb: Runbook) -> Table:
    """Recipe vs what fits vs the projected finish."""
    t = Table(title="night plan (measured on this machine)")
    for col in ("", "recipe", "fits here"):
        t.add_column(col)
    t.add_row(
        "micro-batch x accumulation",
        f"{fit.recipe_micro} x {fit.recipe_accum}",
        f"{fit.micro} x {fit.accum} (effective {cfg.effective_batch} kept)",
    )
    recipe_s = night_seconds(
        fit.recipe_epochs,
        fit.epoch_s,
        fit.eval_s,
        cfg.evaluation.eval_frequency,
        fit.checkpoint_s,
        rb.final_eval_s,
    )
    t.add_row("epochs", str(fit.recipe_epochs), str(fit.epochs))
    t.add_row("epoch time", f"{fit.epoch_s:.1f} s", f"{fit.epoch_s:.1f} s (measured)")
    t.add_row("eval / checkpoint", "", f"~{fit.eval_s:.1f} s / ~{fit.checkpoint_s:.1f} s (est.)")
    t.add_row("final-eval reserve; spare", "", f"{rb.final_eval_s:.0f} s; {args_margin_text(fit)}")
    t.add_row("projected night", _hms(recipe_s), f"{_hms(fit.night_s)} of {_hms(fit.window_s)}")
    if fit.checkpointing is not None:
        kept = "on (nothing faster fits without it)" if fit.checkpointing else "off (fits without)"
        t.add_row("gradient checkpointing", "on", kept)
    t.add_row("batch probes (peak)", "", trials_text(fit.trials))
    if fit.trials_checkpointed:
        other = "without" if fit.checkpointing else "with"
        t.add_row(f"probes {other} checkpointing", "", trials_text(fit.trials_checkpointed))
    return t


def features_table(fit: NightFit) -> Table | None:
    """Step time and peak memory with each optional feature on and off (None: the recipe turns
    none on). Measured in one worker process at the planned micro-batch."""
    if not fit.features:
        return None
    t = Table(title=f"what each feature costs (micro-batch {fit.micro} x {fit.accum}, measured)")
    for col in COLUMNS:
        t.add_column(col)
    for cost in fit.features:
        t.add_row(*cost.cells())
    return t


def trials_text(trials: list[BatchTrial]) -> str:
    return ", ".join(
        f"{tr.micro}: {'OOM' if tr.oom else _gb(tr.peak)}"
        + (f" {tr.ms_per_step:.0f} ms" if tr.ms_per_step else "")
        for tr in trials
    )


def args_margin_text(fit: NightFit) -> str:
    return f"{max(0.0, fit.window_s - fit.night_s):.0f} s spare"


def _hms(s: float) -> str:
    s = round(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
    return f"{s // 60}m{s % 60:02d}s"
