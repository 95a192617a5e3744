"""The policy: ``decide(obs, history, runbook, now, deadline) -> Decision``. Pure.

Rows, in the order they are tried (the table tests in tests/unit/test_policy.py follow it):

Live worker (``obs.running``):
  hang       silence since the newest sign of progress (measured by the supervisor on the
             monotonic clock) > the phase's timeout: startup, and train/data before the
             attempt's first step has finished → startup_timeout_s; train/data (a data stall
             is a stalled step) → max(step_timeout_s, step_timeout_factor × the run's recent
             seconds per step); loader/eval/checkpoint →
             slow_phase_timeout_s                      → RESTART trigger hang (kill first)
  (while a stop is already under way nothing else is considered)
  deadline   now ≥ deadline − final_eval               → STOP_FOR_DEADLINE (with final eval)
  memory     worker tree memory (PSS/USS, else RSS) > the host ceiling (ceiling_gb), the
             worker's device reading or NVML's GPU reading (whole-card usage flagged) > the
             device ceiling (device_fraction × that device's total; none on a CPU), or swap
             growth > swap_growth_gb, and an OOM rung remains
                                                        → RESTART trigger memory
             (OOM ladder exhausted: CONTINUE, recorded once as a warning)
  health     the attempt's health points show a collapse (batch rank under its floor or far
             below its best, or the feature variance far below its best) or a divergence (the
             loss's moving average past a factor of its lowest), and a health rung remains
                                                        → RESTART trigger collapse|divergence
             (graceful stop; exhausted: CONTINUE, recorded once as a warning)
  slow       projected training end > deadline − final_eval → SET_EPOCHS to the largest runbook
             epoch rung that fits, else to what fits; when even the smallest rung does not fit,
             a ``slow.then`` rung remains, a checkpoint exists and ≥ 2 epochs would remain
                                                        → RESTART trigger slow (graceful stop;
             the new attempt gets the rung and the cut epoch count)
             Both carry ``training.epochs`` in ``overrides``: the night runner writes it into the
             night's overrides (state.json) before the control file or the restart acts on it.
  otherwise  CONTINUE

Ended worker (``obs.exit_kind`` set):
  finished                                   → END_NIGHT completed
  stopped for the deadline                   → END_NIGHT deadline
  time left < final_eval                     → END_NIGHT deadline (no time for another attempt)
  attempt or no-progress limit reached       → END_NIGHT limits (best checkpoint kept)
  oom | memory                               → RESTART from newest checkpoint, next OOM rung
                                               (a SIGKILL is ``oom`` only with memory near a
                                               ceiling or a kernel OOM count before it:
                                               ``memory.kill_oom_evidence``)
  nonfinite                                  → RESTART from newest checkpoint strictly before
                                               the bad step (fatal step + 1: the worker reports
                                               steps completed), next LR/warmup/clip rung
  stopped for collapse | divergence          → RESTART from the newest checkpoint at or before
                                               the last healthy point, next health rung
  feature                                    → RESTART from newest checkpoint, feature disabled
  data                                       → RESTART with the dataset fallback
  stopped for slow                           → RESTART from newest checkpoint, next slow.then rung,
                                               epochs = the smallest of the cut in force and
                                               the attempt's total (a cut is never undone)
  stopped for a daemon stop / recovered      → RESTART from newest checkpoint (not a fallback)
  hang | crash | stopped (unasked) | killed  → RESTART from newest checkpoint, same overrides
                                               (``killed``: a SIGKILL with no memory evidence)
  config | resume                            → END_NIGHT (nothing a rung can fix)
  disk (a checkpoint did not fit)            → RESTART from newest checkpoint once, the
                                               checkpoints beyond the newest DISK_KEEP freed
                                               first and keep_last_k = DISK_KEEP from then on;
                                               a second one → END_NIGHT "disk full: …"
  (every restart's action says "restart from step 0 (no checkpoint yet)" when nothing to resume)
  a ladder with no rung left                 → END_NIGHT "<ladder> ladder exhausted"
"""

from __future__ import annotations

from orchestrator.core.runbook import Runbook
from orchestrator.policy import health, ladders
from orchestrator.policy.memory import memory_trip
from orchestrator.policy.slow import too_slow
from orchestrator.policy.types import (
    CONTINUE,
    Decision,
    DecisionKind,
    NightHistory,
    Observation,
)

K = DecisionKind


def decide(
    obs: Observation, history: NightHistory, runbook: Runbook, now: float, deadline: float
) -> Decision:
    if obs.running:
        return _live(obs, history, runbook, now, deadline)
    return _ended(obs, history, runbook, now, deadline)


# ---------------------------------------------------------------------------------------------
def progress_timeout(obs: Observation, runbook: Runbook) -> tuple[float, str]:
    """The silence allowed in the worker's current phase, and the phase's name."""
    hb = runbook.progress
    if (obs.last_heartbeat_at is None and obs.silent_s is None) or obs.phase == "startup":
        return hb.startup_timeout_s, "startup"
    if obs.phase in ("train", "data"):
        if obs.recent_step_s is None:  # no step finished yet: warm-up, first-step compile
            return max(hb.step_timeout_s, hb.startup_timeout_s), f"{obs.phase} (first step)"
        timeout = hb.step_timeout_s
        if obs.recent_step_s > 0:
            timeout = max(timeout, hb.step_timeout_factor * obs.recent_step_s)
        return timeout, obs.phase
    return hb.slow_phase_timeout_s, obs.phase


def silence(obs: Observation, now: float) -> float:
    """Seconds without progress: the supervisor's monotonic measure when it has one."""
    if obs.silent_s is not None:
        return obs.silent_s
    return now - (obs.last_heartbeat_at or obs.started_at)


def _live(
    obs: Observation, history: NightHistory, rb: Runbook, now: float, deadline: float
) -> Decision:
    timeout, phase = progress_timeout(obs, rb)
    silent = silence(obs, now)
    if silent > timeout:
        return Decision(
            K.RESTART,
            "hang",
            f"no progress for {silent:.0f} s in phase {phase} (limit {timeout:.0f} s): "
            "kill the worker (SIGTERM, then SIGKILL) and resume from the last checkpoint",
            {
                "silent_s": round(silent, 1),
                "timeout_s": round(timeout, 1),
                "phase": phase,
                "step": obs.step,
                "recent_step_s": obs.recent_step_s,
            },
        )
    if obs.stopping:
        return CONTINUE
    reserve = rb.final_eval_s
    if now >= deadline - reserve:
        return Decision(
            K.STOP_FOR_DEADLINE,
            "deadline",
            f"{(deadline - now) / 60:.1f} min to the deadline ({rb.final_eval_minutes:g} min "
            "reserved for the final eval): checkpoint, evaluate and stop",
            {"epoch": obs.epoch, "step": obs.step, "seconds_left": round(deadline - now, 1)},
        )
    mem = memory_trip(obs, rb)
    if mem is not None:
        step = ladders.oom_step(history, rb)
        if step is not None:
            return Decision(
                K.RESTART,
                "memory",
                f"{mem['what']}: stop the worker and shrink the batch ({step.effect})",
                mem,
            )
        if not history.memory_warned:
            return Decision(
                K.CONTINUE,
                "memory",
                f"{mem['what']}, but the OOM ladder is exhausted: continuing and watching",
                mem,
            )
    fault = health.health_fault(obs.health, rb.health)
    if fault is not None:
        step = ladders.health_step(history, rb)
        if step is not None:
            return Decision(
                K.RESTART,
                fault.kind,
                f"{fault.what}: stop the worker, roll back to the checkpoint before the drop, "
                f"{step.effect}",
                fault.evidence,
            )
        if not history.health_warned:
            return Decision(
                K.CONTINUE,
                fault.kind,
                f"{fault.what}, but the health ladder is exhausted: continuing and watching",
                fault.evidence,
            )
    return too_slow(obs, history, rb, deadline)


# ---------------------------------------------------------------------------------------------
def _newest(history: NightHistory, before_step: int | None = None) -> str | None:
    refs = [c for c in history.checkpoints if before_step is None or c.step < before_step]
    if not refs:
        return None
    return max(refs, key=lambda c: (c.step, c.ts)).path


def _end(trigger: str, reason: str, evidence: dict[str, object] | None = None) -> Decision:
    return Decision(K.END_NIGHT, trigger, f"end the night: {reason}", evidence or {}, reason=reason)


def _restart(
    trigger: str,
    step: ladders.LadderStep | None,
    resume: str | None,
    action: str,
    evidence: dict[str, object],
) -> Decision:
    ev = dict(evidence)
    if step is not None:
        ev.update(step.evidence, ladder=step.ladder, rung=step.rung)
    ev["resume_from"] = resume
    return Decision(
        K.RESTART,
        trigger,
        action,
        ev,
        resume_from=resume,
        overrides=dict(step.overrides) if step else {},
        ladder=step.ladder if step else None,
        effect=step.effect if step else "",
        fallback=True,
    )


def _from(newest: str | None) -> str:
    """How the next attempt starts, in the words of an action."""
    return "resume" if newest else "restart from step 0 (no checkpoint yet)"


DISK_KEEP = 2  # checkpoints of the lineage a disk-full retry keeps (newest first), best.pt apart


def _disk(
    obs: Observation, history: NightHistory, newest: str | None, ev: dict[str, object]
) -> Decision:
    """A full disk: free the checkpoints beyond the newest good ones and retry once; a second
    full disk ends the night (the last good checkpoint stays), never a restart loop."""
    said = obs.message if obs.message and "disk full" in obs.message else None
    what = said or f"disk full ({obs.message or f'exit {obs.exit_code}'})"
    if history.rungs_used.get("disk", 0) >= 1:
        return _end("disk", f"{what}, again after freeing old checkpoints", ev)
    step = ladders.LadderStep(
        "disk", 0, {"checkpoint.keep_last_k": DISK_KEEP},
        f"checkpoints beyond the newest {DISK_KEEP} good ones freed, {DISK_KEEP} kept from now on",
        {"free_keep": DISK_KEEP},
    )  # fmt: skip
    return _restart("disk", step, newest, f"{what}: free old checkpoints, {_from(newest)}", ev)


def _ended(
    obs: Observation, history: NightHistory, rb: Runbook, now: float, deadline: float
) -> Decision:
    kind = obs.exit_kind or "crash"
    ev: dict[str, object] = {
        "exit_kind": kind,
        "exit_code": obs.exit_code,
        "step": obs.step,
        "epoch": obs.epoch,
    }
    if kind == "finished":
        return _end("completed", "training completed with its final evaluation", ev)
    if kind == "stopped" and obs.stop_reason == "deadline":
        return _end("deadline", f"stopped for the deadline at epoch {obs.epoch}", ev)
    if kind in ("config", "resume"):
        return _end(kind, f"{kind} error the runbook cannot fix: {obs.message}", ev)
    newest = _newest(history)
    if kind == "disk":
        return _disk(obs, history, newest, ev)
    if now >= deadline - rb.final_eval_s:
        return _end("deadline", f"{kind} too close to the deadline to try again", ev)
    if kind == "stopped" and obs.stop_reason in ("daemon", "recovered"):
        ev["resume_from"] = newest
        return Decision(
            K.RESTART,
            "resume",
            f"resume the night from the last checkpoint (worker was stopped: {obs.stop_reason})",
            ev,
            resume_from=newest,
        )
    lim = rb.limits
    if history.attempts >= lim.max_attempts:
        return _end("limits", f"attempt limit reached ({history.attempts}/{lim.max_attempts})", ev)
    if history.attempts_without_progress >= lim.max_attempts_without_progress:
        return _end(
            "limits",
            f"{history.attempts_without_progress} attempts in a row without progress",
            ev,
        )
    if kind in ("oom", "memory"):
        step = ladders.oom_step(history, rb)
        if step is None:
            return _end(kind, "OOM ladder exhausted", ev)
        what = "out of memory" if kind == "oom" else "memory over the runbook limit"
        return _restart(kind, step, newest, f"{what}: {step.effect}; {_from(newest)}", ev)
    if kind == "nonfinite":
        bad = (obs.fatal_step if obs.fatal_step is not None else obs.step) + 1
        step = ladders.nonfinite_step(history, rb)
        if step is None:
            return _end(kind, "non-finite ladder exhausted", ev)
        back = _newest(history, before_step=bad)
        ev["bad_step"] = bad
        where = f"checkpoint before step {bad}" if back else "the start (no earlier checkpoint)"
        return _restart(
            kind,
            step,
            back,
            f"non-finite loss at step {bad}: roll back to {where}, {step.effect}",
            ev,
        )
    if kind == "stopped" and obs.stop_reason in ("collapse", "divergence"):
        fault = health.health_fault(obs.health, rb.health)
        step = ladders.health_step(history, rb)
        if step is None:
            return _end(obs.stop_reason, "health ladder exhausted", ev)
        good = fault.good_step if fault is not None else None
        back = _newest(history, before_step=None if good is None else good + 1)
        if fault is not None:
            ev.update(bad_step=fault.bad_step, good_step=good)
        where = f"checkpoint at or before step {good}" if back else "the start (no earlier one)"
        what = fault.what if fault is not None else obs.stop_reason
        return _restart(
            obs.stop_reason, step, back, f"{what}: roll back to {where}, {step.effect}", ev
        )
    if kind == "feature":
        step = ladders.feature_step(history, rb, obs.fatal_feature)
        if step is None:
            return _end(
                kind, f"feature failure ({obs.fatal_feature}) with no feature left to disable", ev
            )
        return _restart(kind, step, newest, f"{step.effect}; {_from(newest)}", ev)
    if kind == "data":
        step = ladders.dataset_step(history, rb)
        if step is None:
            return _end(kind, f"dataset missing and no fallback left: {obs.message}", ev)
        return _restart(kind, step, newest, f"dataset missing: {step.effect}", ev)
    if kind == "stopped" and obs.stop_reason == "slow":
        step = ladders.slow_then_step(history, rb)
        if step is not None:
            totals = [t for t in (obs.total_epochs, history.config.epochs) if t]
            keep = {"training.epochs": min(totals)} if totals else {}
            step = ladders.LadderStep(
                step.ladder, step.rung, {**step.overrides, **keep}, step.effect, step.evidence
            )
            epochs = keep.get("training.epochs", obs.total_epochs)
            return _restart(
                "slow", step, newest, f"too slow: {step.effect}; resume with {epochs} epochs", ev
            )
    what = {
        "hang": "hung worker killed",
        "crash": f"crash ({obs.message})",
        "stopped": "worker stopped without being asked",
        "killed": "killed by SIGKILL from outside, memory not near a ceiling",
    }.get(kind, kind)
    as_was = " as it was" if kind == "killed" else ""
    how = f"resume from the last checkpoint{as_was}" if newest else _from(newest)
    return _restart(kind, None, newest, f"{what}: {how}", ev)
