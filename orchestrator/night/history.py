"""A night read back from the state file and its attempts' events: what the policy needs.

- ``override_args``: overrides → the worker's ``--set`` items; ``config_facts``: a config as the
  policy sees it.
- ``attempt_view``: one attempt's events, folded (:mod:`orchestrator.core.fold`).
- ``lineage`` / ``newest``: the usable checkpoints of the current lineage (an attempt that
  resumed from step S abandons every later checkpoint) and the newest one.
- ``results_of`` / ``record_results``: the night's baseline, final metrics and best checkpoint
  by :mod:`orchestrator.policy.results`, gathered from the attempts' events, and recorded on
  the night.
- ``build_history``: the :class:`~orchestrator.policy.NightHistory` (rungs taken, features
  disabled, attempts without progress, checkpoints) derived from the state alone; what counts
  as progress and as a warning already given is :mod:`orchestrator.policy.record`'s rule.
- ``orphan_health`` / ``ended_observation`` / ``stop_reason_of``: the observations the policy
  judges after an attempt ended or its supervisor died.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.core.fold import RunFold, RunView, fold_run_dir, metrics_of
from orchestrator.core.runbook import (
    FEATURE_KEYS,
    Runbook,
)
from orchestrator.core.state import (
    Attempt,
    Night,
    parse_iso,
)
from orchestrator.policy import (
    CheckpointRef,
    ConfigFacts,
    NightHistory,
    Observation,
)
from orchestrator.policy.health import points_of
from orchestrator.policy.record import (
    HEALTH_WARNING,
    MEMORY_WARNING,
    AttemptOutcome,
    attempts_without_progress,
    rungs_taken,
    stop_reason,
    warned,
)
from orchestrator.policy.recovery import orphan_health as policy_orphan_health
from orchestrator.policy.results import BestSeen, NightResults, night_results
from trainer.config import Config

RUNG_SKIPPED = "rung_skipped"  # a rung whose overrides the recipe's config schema rejects


# ---------------------------------------------------------------------------------------------
# reading the night back from the state file
def override_args(overrides: dict[str, Any]) -> list[str]:
    """{key: value} → ["key=<json>"] (JSON is YAML, so the worker's --set parses it back)."""
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def config_facts(cfg: Config) -> ConfigFacts:
    on = {}
    for feature, key in FEATURE_KEYS.items():
        section, name = key.split(".")
        on[feature] = bool(getattr(getattr(cfg, section), name))
    return ConfigFacts(
        micro_batch=cfg.data.batch_size,
        accum_steps=cfg.training.accumulation_steps,
        lr=cfg.training.lr,
        epochs=cfg.training.epochs,
        eval_frequency=cfg.evaluation.eval_frequency,
        features=on,
        datasets=tuple(d.name for d in cfg.data.datasets),
    )


def attempt_view(att: Attempt) -> RunView:
    """Every event of ``att`` so far, folded (:mod:`orchestrator.core.fold`)."""
    return fold_run_dir(att.run_dir, att.index)


def lineage(night: Night, views: Sequence[RunView] | None = None) -> list[CheckpointRef]:
    """Usable checkpoints of the current lineage (see the module docstring), oldest first;
    ``views``: the attempts' folded events when the caller has them already."""
    refs: list[CheckpointRef] = []
    for i, att in enumerate(night.attempts):
        if att.resume_from is None:
            refs = []
        else:
            start = next((r for r in refs if r.path == att.resume_from), None)
            if start is not None:
                refs = [r for r in refs if r.step <= start.step]
        view = views[i] if views is not None else attempt_view(att)
        for ev in view.checkpoints:
            if ev.get("verified", True) and Path(str(ev["path"])).is_file():
                refs.append(
                    CheckpointRef(
                        str(ev["path"]), int(ev["epoch"]), int(ev["step"]), float(ev.get("ts", 0.0))
                    )
                )
    return [r for r in refs if Path(r.path).is_file()]


def newest(refs: list[CheckpointRef]) -> CheckpointRef | None:
    return max(refs, key=lambda r: (r.step, r.ts)) if refs else None


def results_of(
    night: Night,
    views: Sequence[RunView] | None = None,
    extra_evals: Sequence[dict[str, Any]] = (),
) -> NightResults:
    """The night's results (:func:`orchestrator.policy.results.night_results`) from its
    attempts' events (``views``: already folded, one per attempt), plus ``extra_evals`` a
    separate final-evaluation worker made."""
    if views is None:
        views = [attempt_view(att) for att in night.attempts]
    bests = []
    for view in views:
        for ev in view.bests:
            copy = Path(str(ev.get("path"))).parent / "best.pt"
            bests.append(BestSeen(str(ev.get("path")), str(copy) if copy.is_file() else None))
    evals = [ev for view in views for ev in view.evals] + list(extra_evals)
    return night_results(evals, bests, lineage(night, views))


def record_results(night: Night, found: NightResults) -> None:
    """Record what :func:`results_of` found on the night (what it did not find stays)."""
    if found.baseline is not None:
        night.baseline_metrics = metrics_of(dict(found.baseline))
    if found.final is not None:
        night.final_metrics = metrics_of(dict(found.final))
    if found.best_checkpoint is not None:
        night.best_checkpoint = found.best_checkpoint


def build_history(night: Night, cfg: Config, base_cfg: Config) -> NightHistory:
    taken = [fb.evidence for fb in night.fallbacks]
    taken += [d.evidence for d in night.decisions if d.kind == RUNG_SKIPPED]
    rungs, disabled = rungs_taken(taken)
    outcomes = [
        AttemptOutcome(
            att.exit_kind, max((int(c["step"]) for c in attempt_view(att).checkpoints), default=-1)
        )
        for att in night.attempts
    ]
    return NightHistory(
        attempts=len(night.attempts),
        attempts_without_progress=attempts_without_progress(outcomes),
        config=config_facts(cfg),
        base_effective_batch=base_cfg.effective_batch,
        overrides=dict(night.overrides),
        rungs_used=rungs,
        disabled_features=disabled,
        checkpoints=tuple(lineage(night)),
        memory_warned=warned(night.decisions, MEMORY_WARNING),
        health_warned=warned(night.decisions, HEALTH_WARNING),
    )


def orphan_health(
    events: list[dict[str, Any]],
    rb: Runbook,
    now_mono: float,
    now_wall: float,
    created_at: float | None,
) -> dict[str, Any]:
    """Whether a worker left running by a dead supervisor still makes progress (the policy's
    :func:`~orchestrator.policy.recovery.orphan_health` on what its events say).

    Silence = now − the newest progress sign (:mod:`orchestrator.core.fold`), on the events'
    ``mono`` clock (the worker's ``time.monotonic()``, system-wide on Linux/macOS) against
    ``now_mono``; events without ``mono`` count on the wall clock against ``now_wall``; no
    progress event at all: silence since the process was created (``created_at``, wall;
    unknown → never healthy). Returns ``{healthy, silent_s, timeout_s, phase, step}``."""
    fold = RunFold()
    fold.feed(1, events)
    v = fold.view()
    if v.progress_mono is not None:
        silent: float | None = now_mono - v.progress_mono
    elif v.progress_ts is not None:
        silent = now_wall - v.progress_ts
    else:
        silent = now_wall - created_at if created_at is not None else None
    obs = Observation(
        running=True,
        started_at=0.0,
        silent_s=silent,
        recent_step_s=v.step_s,
        phase=v.phase or "startup",
        step=v.step or 0,
    )
    return policy_orphan_health(obs, rb).as_json()


def stop_reason_of(night: Night, attempt_index: int) -> str | None:
    """Why the attempt was asked to stop (:func:`orchestrator.policy.record.stop_reason`)."""
    return stop_reason(night.decisions, attempt_index)


def ended_observation(att: Attempt, view: RunView, stop_reason: str | None) -> Observation:
    fatal = view.fatal or {}
    return Observation(
        running=False,
        started_at=parse_iso(att.started_at).timestamp() if att.started_at else 0.0,
        last_heartbeat_at=view.progress_ts,
        phase=view.phase or "startup",
        epoch=view.epochs_done or 0,
        step=view.step or 0,
        total_epochs=view.total_epochs or 0,
        stop_reason=stop_reason,
        exit_kind=att.exit_kind,
        exit_code=att.exit_code,
        message=att.message or "",
        fatal_feature=fatal.get("feature"),
        fatal_step=fatal.get("step"),
        finished_reason=(view.finished or {}).get("reason"),
        health=points_of(view.health),
    )
