"""The report's judgement in words: each night's verdict line against its success checks, and
the next step ("Next:") from the upstream decision matrix or, for a night without an evaluated
model, what broke and what to fix first.

    verdict_line(facts)   # "✅ **Night 1 — conservative: SUCCEEDED**, success level **should** …"
    next_step(facts)      # "Linear probe 69.4% (65-70%, good): resume from the best checkpoint ..."

The success checks are judged by the night runner (``Night.success``); this module only words
them.
"""

from __future__ import annotations

import shlex
from typing import Any

from orchestrator.core.runbook import Check
from orchestrator.core.state import RESUMABLE, SuccessCheck
from orchestrator.policy.next_step import (
    EXCELLENT_ABOVE,
    GOOD_FROM,
    MODERATE_FROM,
    demo_outcome,
    probe_band,
)
from orchestrator.views.fmt import NA, fmt_pct
from orchestrator.views.report.facts import NightFacts
from orchestrator.views.report.markdown import set_args
from trainer.events import WORKER_LOG_FILE

ICON = {
    "succeeded": "✅",
    "partial": "⚠️",
    "failed": "❌",
    "running": "⏳",
    "stopped": "⏸️",
    "skipped": "⏭️",
    "pending": "…",
}
FRACTION_METRICS = ("linear_probe", "knn_1", "knn_5", "knn_20", "contrastive_accuracy")
POINTS_METRICS = ("gain_over_previous_night",)  # a fraction shown as linear probe points


def _metric_value(metric: str, value: Any, gain: bool = False) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int | float):
        return NA if value is None else str(value)
    if metric in POINTS_METRICS:
        return f"{100 * value:+.1f} pts"
    if metric in FRACTION_METRICS:
        return f"{100 * value:+.1f} pts" if gain else f"{100 * value:.1f}%"
    return f"{value:.3g}"


def check_text(c: SuccessCheck, spec: Check | None = None) -> str:
    """``✓ linear probe > 55%: 63.1%`` — the check made readable, with its value. ``spec`` is
    the runbook's criterion the check was judged by (``NightFacts.check_specs``): its metric,
    operator, threshold and whether it compares a gain; without one (the runbook is gone or
    changed since), the recorded name as it is."""
    mark = {True: "✓", False: "✗", None: "?"}[c.passed]
    if spec is not None and spec.op is not None and spec.value is not None:
        metric, gain = spec.metric, spec.relative
        label = metric.replace("_", " ").replace("knn ", "kNN k=")
        return (
            f"{mark} {label}{' gain' if gain else ''} {spec.op} "
            f"{_metric_value(metric, spec.value, gain)}: {_metric_value(metric, c.value, gain)}"
        )
    label = c.name.replace("_", " ")
    limit = f" (threshold {c.threshold})" if c.threshold not in (None, True) else ""
    return f"{mark} {label}: {_metric_value(c.name, c.value)}{limit}"


def verdict_line(f: NightFacts) -> str:
    n = f.night
    icon = ICON.get(n.status, "")
    head = f"{icon} **Night {n.index + 1} — {n.name}: {n.status.upper()}**"
    if n.success is not None:
        head += f", success level **{n.success.level}**"
        by_level = []
        for level in ("must", "should", "stretch"):
            cs = [c for c in n.success.checks if c.level == level]
            if cs:
                ok = sum(1 for c in cs if c.passed)
                texts = "; ".join(check_text(c, f.check_specs.get(c.name)) for c in cs)
                by_level.append(f"{level} {ok}/{len(cs)} ({texts})")
        if by_level:
            head += " — " + " · ".join(by_level)
    elif n.status in RESUMABLE:
        head += " — not judged yet"
    if n.reason:
        head += f". {n.reason}"
    return head


def next_step(f: NightFacts) -> str:
    """The next step: the upstream decision matrix by linear probe (demo: vs the random
    encoder); for a night without an evaluated model, what to fix first."""
    n = f.night
    cfg = f"hjepa-night run --config {shlex.quote(n.config)}"
    rerun = f"`{cfg} {set_args(n.overrides)}`".replace(" `", "`")
    if n.status in ("pending", "skipped") and not n.attempts:
        return f"Not run ({n.reason or n.status}). Start it with {rerun}."
    lp = f.final.linear_probe if f.final else None
    if lp is None:
        return _failure_advice(f, rerun)
    if f.demo:
        gain = f.probe_gain()
        knn_gain = None
        if f.final and f.base and "20" in f.final.knn and "20" in f.base.knn:
            knn_gain = f.final.knn["20"] - f.base.knn["20"]
        if gain is None:
            return f"Linear probe {fmt_pct(lp)}; no random-init evaluation to compare with."
        versus = (
            f"linear probe {fmt_pct(lp)} vs {fmt_pct(f.base.linear_probe if f.base else None)}"
            f" for the random encoder ({100 * gain:+.1f} pts"
            + (f", kNN k=20 {100 * knn_gain:+.1f} pts)" if knn_gain is not None else ")")
        )
        outcome = demo_outcome(gain, knn_gain)
        if outcome == "learned":
            return (
                f"Demo: the encoder learned features the random one lacks ({versus}); the "
                "pipeline works end to end. Next: `hjepa-night preflight --config "
                "configs/overnight_training_conservative.yaml`, then `hjepa-night start "
                "--plan sequential` for the real nights."
            )
        if outcome == "barely":
            return (
                f"Demo: barely above the random encoder ({versus}). Train longer "
                f"(`{cfg} --set training.epochs=<more>`) before reading anything into it."
            )
        return (
            f"Demo: no better than the random encoder ({versus}): debug — check that the "
            "loss falls, feature std stays > 0.05 and the effective rank does not collapse."
        )
    band = probe_band(lp)
    ex, good, mod = (f"{100 * t:.0f}" for t in (EXCELLENT_ABOVE, GOOD_FROM, MODERATE_FROM))
    if band == "excellent":
        return (
            f"Linear probe {fmt_pct(lp)} (> {ex}%, excellent): scale to ImageNet-1K from the "
            "aggressive config, 300 epochs with multi-crop (expected 73-78%)."
        )
    if band == "good":
        more = (n.epochs_done or f.run.epochs_done or 0) + 50
        return (
            f"Linear probe {fmt_pct(lp)} ({good}-{ex}%, good): resume from the best checkpoint "
            f"for 50-100 more epochs (expected 68-73%) — the resume command below with "
            f"`--set training.epochs={more}`."
        )
    if band == "moderate":
        return (
            f"Linear probe {fmt_pct(lp)} ({mod}-{good}%, moderate): tune the LR and batch size "
            "before scaling (expected 65-70%)."
        )
    return (
        f"Linear probe {fmt_pct(lp)} (< {mod}%, poor): debug before scaling — check the loss "
        "curve per level, feature std and effective rank, and the fallbacks below."
    )


def _failure_advice(f: NightFacts, rerun: str) -> str:
    n = f.night
    last = n.attempts[-1] if n.attempts else None
    kind = last.exit_kind if last else None
    fatal = f.run.fatal or {}
    what = fatal.get("message") or (last.message if last else None) or n.reason or "unknown"
    log = f.last_run_dir / WORKER_LOG_FILE if f.last_run_dir else None
    if n.status == "running":
        return "Still running: no evaluated model yet. Watch it with `hjepa-night status`."
    if n.status == "stopped":
        return (
            "Stopped on request, resumable: `hjepa-night start` resumes a plan, "
            f"{rerun} a single night."
        )
    advice = {
        "data": "the dataset is missing or unreadable: fetch it (or point data.datasets at it), "
        "check with `hjepa-night preflight --config ...`, then rerun",
        "oom": "memory ran out on every rung of the OOM ladder: lower data.batch_size further or "
        "turn on model.use_gradient_checkpointing, check with preflight, then rerun",
        "memory": "memory stayed over a runbook ceiling (host or device): lower "
        "data.batch_size or data.num_workers, check with preflight, then rerun",
        "killed": "the worker kept being SIGKILLed from outside with memory far from every "
        "ceiling: find the sender (a person, a scheduler's preemption, a watchdog), then rerun",
        "nonfinite": "the loss kept diverging after every LR rung: lower training.lr further and "
        "training.clip_grad to 1.0, then rerun",
        "feature": f"feature {fatal.get('feature') or '?'} kept failing: switch it off in the "
        "config and rerun",
        "hang": "the worker stopped making progress: read the worker log, then rerun",
        "config": "the config was rejected: fix the key named in the message, then rerun",
        "resume": "no usable checkpoint to resume from: rerun from the start",
    }.get(kind or "", "read the worker log for the traceback, fix the cause, then rerun")
    tried = len(n.fallbacks)
    return (
        f"No evaluated model. Broke with {kind or 'an unknown error'}: {what}. "
        f"Tried {tried} fallback{'s' if tried != 1 else ''} (below). Next: {advice} "
        f"({rerun}{f'; log: `{log}`' if log else ''})."
    )
