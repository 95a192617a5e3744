"""The next unused rung of each ladder, turned into concrete config overrides.

Pure functions of (history, runbook). Each returns ``None`` when the ladder is exhausted, or a
:class:`LadderStep` with the overrides to add, the text of what changed for the experiment, and the
numbers behind it. Rungs that would change nothing (a batch rung not smaller than the batch in
force, a rung whose values are already set) are skipped, not counted as used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.runbook import FEATURE_KEYS, Runbook, Rung
from orchestrator.policy.types import NightHistory

BATCH = "data.batch_size"
ACCUM = "training.accumulation_steps"
LR = "training.lr"


@dataclass(frozen=True)
class LadderStep:
    ladder: str
    rung: int  # index in the ladder (0-based) of the rung taken
    overrides: dict[str, Any]
    effect: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _fmt(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


def _already(history: NightHistory, rung: Rung) -> bool:
    """Every value of the rung is in force: set by an override, or (a feature switch) by the
    config itself — e.g. "gradient checkpointing on" in a recipe that has it on, unless
    preflight turned it off because the batch fit without it."""
    return all(_in_force(history, k) == v for k, v in rung.overrides.items())


def _in_force(history: NightHistory, key: str) -> Any:
    feature = next((f for f, k in FEATURE_KEYS.items() if k == key), None)
    if feature is not None and feature in history.config.features:
        return history.config.features[feature]
    return history.overrides.get(key)


def oom_step(history: NightHistory, runbook: Runbook) -> LadderStep | None:
    """Next OOM rung; keeps micro × accumulation = the night's effective batch where it can."""
    facts = history.config
    rungs = runbook.ladders.oom
    for i in range(history.rungs_used.get("oom", 0), len(rungs)):
        new = dict(rungs[i].overrides)
        if _already(history, rungs[i]):
            continue
        micro = int(new.get(BATCH, facts.micro_batch))
        if BATCH in new and micro >= facts.micro_batch:
            continue
        if ACCUM in new:
            accum = int(new[ACCUM])
        elif BATCH in new:
            accum = max(1, round(history.base_effective_batch / micro))
            new[ACCUM] = accum
        else:
            accum = facts.accum_steps
        cur_eff = facts.micro_batch * facts.accum_steps
        new_eff = micro * accum
        effect = f"micro-batch {facts.micro_batch}×{facts.accum_steps} → {micro}×{accum}"
        if new_eff == cur_eff:
            effect += f" (effective batch {new_eff} kept)"
        elif LR not in new:
            lr = facts.lr * new_eff / cur_eff
            new[LR] = float(f"{lr:.6g}")
            effect += (
                f"; effective batch {cur_eff} → {new_eff}, LR scaled linearly "
                f"×{new_eff}/{cur_eff}: {facts.lr:g} → {new[LR]:g}"
            )
        if BATCH not in new:
            effect = f"{_fmt(rungs[i].overrides)} (micro-batch {micro}×{accum} unchanged)"
        evidence = {"micro_batch": micro, "accum_steps": accum, "effective_batch": new_eff}
        return LadderStep("oom", i, new, effect, evidence)
    return None


def nonfinite_step(history: NightHistory, runbook: Runbook) -> LadderStep | None:
    """Next non-finite rung; an LR rung is rescaled if an OOM rung changed the effective batch."""
    return _lowering_step("nonfinite", runbook.ladders.nonfinite, history)


def health_step(history: NightHistory, runbook: Runbook) -> LadderStep | None:
    """Next collapse/divergence rung: an LR rung rescaled like the non-finite ladder's (skipped
    unless it lowers the LR), a VICReg rung skipped when the loss has no VICReg term."""
    no_vicreg = not history.config.features.get("vicreg")

    def skip(new: dict[str, Any]) -> bool:
        return no_vicreg and any(k.startswith("loss.vicreg") for k in new)

    return _lowering_step("health", runbook.ladders.health, history, skip)


def _lowering_step(
    ladder: str,
    rungs: list[Rung],
    history: NightHistory,
    skip: Callable[[dict[str, Any]], bool] | None = None,
) -> LadderStep | None:
    """The next unused rung of a ladder that calms training down: an LR rung is rescaled by the
    effective batch in force (an OOM rung may have changed it) and skipped unless it lowers the
    LR; ``skip`` drops rungs that do not apply to this recipe."""
    facts = history.config
    for i in range(history.rungs_used.get(ladder, 0), len(rungs)):
        new = dict(rungs[i].overrides)
        if _already(history, rungs[i]) or (skip is not None and skip(new)):
            continue
        if LR in new:
            scale = facts.micro_batch * facts.accum_steps / history.base_effective_batch
            lr = float(f"{float(new[LR]) * scale:.6g}")
            if lr >= facts.lr:
                continue
            new[LR] = lr
            effect = f"LR {facts.lr:g} → {lr:g}"
            if scale != 1:
                effect += f" (rung {rungs[i].overrides[LR]:g} × effective-batch scale {scale:g})"
        else:
            effect = _fmt(new)
        return LadderStep(ladder, i, new, effect, {"lr_before": facts.lr})
    return None


def feature_step(history: NightHistory, runbook: Runbook, named: str | None) -> LadderStep | None:
    """Disable the named feature if it is on, else the next enabled one in the runbook order."""
    on = history.config.features
    order = [f for f in runbook.ladders.features if f not in history.disabled_features]
    candidates = ([named] if named in FEATURE_KEYS else []) + order
    for feature in candidates:
        if feature is None or feature in history.disabled_features or not on.get(feature, False):
            continue
        key = FEATURE_KEYS[feature]
        how = "named by the worker" if feature == named else "next in the runbook order"
        return LadderStep(
            "features",
            len(history.disabled_features),
            {key: False},
            f"feature {feature} disabled ({how}; {key}=false)",
            {"feature": feature, "named": named},
        )
    return None


def dataset_step(history: NightHistory, runbook: Runbook) -> LadderStep | None:
    rung = runbook.ladders.dataset_fallback
    if rung is None or history.rungs_used.get("data", 0) > 0:
        return None
    names = [d.get("name") for d in rung.overrides.get("data.datasets", []) if isinstance(d, dict)]
    effect = f"datasets {list(history.config.datasets)} → {names or _fmt(rung.overrides)}"
    return LadderStep(
        "data", 0, dict(rung.overrides), effect, {"from": list(history.config.datasets)}
    )


def slow_then_step(history: NightHistory, runbook: Runbook) -> LadderStep | None:
    rungs = runbook.ladders.slow.then
    for i in range(history.rungs_used.get("slow", 0), len(rungs)):
        if _already(history, rungs[i]):
            continue
        return LadderStep("slow", i, dict(rungs[i].overrides), _fmt(rungs[i].overrides))
    return None


def epoch_cut(total: int, fit: int, epochs_done: int, preferred: list[int]) -> int | None:
    """New total when only ``fit`` epochs fit: the largest runbook rung ≤ fit, else ``fit``.

    Never below the epoch in progress (``epochs_done + 1``); None when no cut is possible.
    """
    floor = epochs_done + 1
    rungs = [e for e in preferred if floor <= e <= fit and e < total]
    target = max(rungs) if rungs else max(fit, floor)
    return target if target < total else None
