"""Too slow for the window: the live epoch cut (and the ``slow.then`` restart), one rule of
:func:`orchestrator.policy.decide.decide`, on the one forecast model (``policy.forecast``)."""

from __future__ import annotations

from orchestrator.core.runbook import Runbook
from orchestrator.policy import forecast, ladders
from orchestrator.policy.types import CONTINUE, Decision, DecisionKind, NightHistory, Observation

K = DecisionKind


def too_slow(obs: Observation, history: NightHistory, rb: Runbook, deadline: float) -> Decision:
    """The "slow" rule of :func:`orchestrator.policy.decide.decide` (see its table): the
    projected training end past deadline − final eval cuts the epochs live to the largest
    runbook rung that fits, else to what fits; a ``slow.then`` restart when even the
    smallest rung does not fit."""
    per = forecast.epoch_cost(
        obs.epoch_seconds, obs.eval_seconds, obs.checkpoint_seconds, len(obs.epoch_seconds)
    )
    if per is None or obs.epoch_end_ts is None or obs.total_epochs <= obs.epoch:
        return CONTINUE
    limit = deadline - rb.final_eval_s
    end = forecast.projected_training_end(obs.epoch_end_ts, obs.epoch, obs.total_epochs, per)
    if end <= limit:
        return CONTINUE
    fit = forecast.epochs_that_fit(obs.epoch_end_ts, obs.epoch, per, limit)
    evidence = {
        "epoch": obs.epoch,
        "total_epochs": obs.total_epochs,
        "epoch_cost_s": round(per, 1),
        "late_by_s": round(end - limit, 1),
        "epochs_that_fit": fit,
    }
    preferred = rb.ladders.slow.epochs
    target = ladders.epoch_cut(obs.total_epochs, fit, obs.epoch, preferred)
    then = ladders.slow_then_step(history, rb)
    if (
        target is not None
        and preferred
        and target < min(preferred)
        and then is not None
        and history.checkpoints
        and target - obs.epoch >= 2
    ):
        return Decision(
            K.RESTART,
            "slow",
            f"even {min(preferred)} epochs do not fit ({fit} do): checkpoint, stop and restart "
            f"with {then.effect} and {target} epochs",
            dict(evidence, epochs=target),
            epochs=target,
            overrides={"training.epochs": target},
        )
    if target is not None:
        return Decision(
            K.SET_EPOCHS,
            "slow",
            f"projected to end {end - limit:.0f} s past deadline − final eval at "
            f"{per:.0f} s/epoch: cut epochs {obs.total_epochs} → {target} live",
            evidence,
            epochs=target,
            overrides={"training.epochs": target},
            effect=f"epochs {obs.total_epochs} → {target} (the rest of the LR/EMA schedules "
            "rescaled)",
            fallback=True,
        )
    return CONTINUE
