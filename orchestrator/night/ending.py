"""How a night ends: the best checkpoint, the final metrics (a separate evaluation when the last
checkpoint has none), the pictures of the best checkpoint (:mod:`orchestrator.night.pictures`),
the verdict against the runbook's success criteria, the forecast errors and the status
(:func:`orchestrator.policy.recovery.end_status`) — and, when the runner itself failed, a
recorded ``runner_error`` and an ending all the same.

:class:`Ending` is an object the night runner holds, given the night's attempts
(:class:`~orchestrator.night.attempts.NightBase`): it reads the night and records through them.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orchestrator.core.fold import RunView
from orchestrator.core.state import (
    Night,
    Success,
    parse_iso,
)
from orchestrator.night.attempts import NightBase, worker_env
from orchestrator.night.history import (
    attempt_view,
    build_history,
    config_facts,
    lineage,
    newest,
    record_results,
    results_of,
)
from orchestrator.night.pictures import PICTURES, picture_evidence, pictures_of
from orchestrator.night.supervisor import Supervisor
from orchestrator.policy import (
    CheckpointRef,
    Decision,
    DecisionKind,
    NightEvidence,
    forecast,
    judge,
)
from orchestrator.policy.recovery import (
    end_status,
    final_eval_decide,
    finished_in_window,
    needs_final_eval,
    no_unrecovered_nonfinite,
)
from orchestrator.preflight.fit import read_fits


class Ending:
    """The night runner's ending (see the module docstring). Owns nothing that changes; reads
    and records through the night's attempts it is given."""

    def __init__(self, night: NightBase) -> None:
        self.store, self.state, self.index = night.store, night.state, night.index
        self.rb, self.sys, self.stop, self.runs = night.rb, night.sys, night.stop, night.runs
        self.deadline, self.base_cfg = night.deadline, night.base_cfg
        self.save, self.record, self.cfg = night.save, night.record, night.cfg
        self.worker_command, self.worker_sets = night.worker_command, night.worker_sets

    @property
    def night(self) -> Night:
        return self.state.nights[self.index]

    def finalise(self, d: Decision) -> None:
        n = self.night
        views = [attempt_view(att) for att in n.attempts]  # each attempt's events, folded once
        found = results_of(n, views)
        top = newest(lineage(n, views))
        pictured = list(views)  # and a final-evaluation worker's, which is no attempt
        final_epoch = int(found.final["epoch"]) if found.final else None
        if top is not None and needs_final_eval(final_epoch, top.epoch):
            unpictured = top.path == found.best_checkpoint and not pictures_of(views, top.path)
            extra = self.eval_only(top, pictures=unpictured, views=pictured)
            found = results_of(n, views, [extra]) if extra else found
        record_results(n, found)
        self.picture_best(pictured)
        last = n.attempts[-1] if n.attempts else None
        finished_ts = None
        if last is not None:
            fin = attempt_view(last).finished
            finished_ts = float(fin["ts"]) if fin else None
        completed = d.trigger == "completed"
        verdict = judge(
            self.rb.success,
            n.final_metrics,
            n.baseline_metrics,
            finished_in_window=finished_in_window(completed, finished_ts, self.deadline),
            no_unrecovered_nonfinite=no_unrecovered_nonfinite(
                last.exit_kind if last else None, n.final_metrics is not None
            ),
            evidence=self.evidence(finished_ts if completed else None),
        )
        n.success = Success.model_validate(asdict(verdict))
        actual = finished_ts or time.time()
        projections = [parse_iso(f.projected_finish).timestamp() for f in n.forecasts]
        n.forecast_errors_s = forecast.forecast_errors(projections, actual)
        n.forecast_error_s = n.forecast_errors_s[0] if n.forecast_errors_s else None
        n.end(
            end_status(  # type: ignore[arg-type]
                completed, verdict.level, n.final_metrics is not None, n.epochs_done or 0
            ),
            f"{d.reason} (success level: {verdict.level})",
        )
        if self.state.current_night == self.index:
            self.state.current_night = None
        self.save()

    def evidence(self, finished_ts: float | None) -> NightEvidence:
        """What the success checks read beyond the final evaluation (see ``NightEvidence``)."""
        n = self.night
        disabled_by = {
            str(fb.evidence["feature"]): fb.action
            for fb in n.fallbacks
            if fb.evidence.get("ladder") == "features" and fb.evidence.get("feature")
        }
        final_cfg = self.cfg()
        off = set(build_history(n, final_cfg, self.base_cfg).disabled_features)
        now_on = {f: on and f not in off for f, on in config_facts(final_cfg).features.items()}
        prev = self.state.nights[self.index - 1] if self.index > 0 else None
        epochs = [e for att in n.attempts for e in attempt_view(att).epochs]
        last = max(
            epochs, key=lambda e: (int(e.get("epoch", 0)), float(e.get("ts", 0))), default=None
        )
        loss = last.get("mean_loss") if last else None
        start = parse_iso(n.window_start).timestamp() if n.window_start else None
        fits = [
            r
            for r in read_fits(self.store.dir)
            if Path(str(r.get("config"))).name == Path(n.config).name
            and r.get("speedup_vs_no_flash") is not None
        ]
        speedup = float(fits[-1]["speedup_vs_no_flash"]) if fits else None
        source = ""
        if fits:
            r = fits[-1]
            source = (
                f"{r.get('source', 'preflight')} probe at micro-batch {r.get('micro')}: "
                f"{r.get('ms_flash_on')} ms/step "
                f"with flash attention, {r.get('ms_flash_off')} without"
            )
        return NightEvidence(
            features_planned=config_facts(self.base_cfg).features,
            features_final=now_on,
            disabled_by=disabled_by,
            previous=prev.final_metrics if prev is not None else None,
            previous_name=prev.name if prev is not None else None,
            speedup_vs_no_flash=speedup,
            speedup_source=source,
            final_loss=float(loss) if isinstance(loss, int | float) else None,
            night_hours=(
                None if finished_ts is None or start is None else (finished_ts - start) / 3600
            ),
        )

    def eval_only(
        self, ref: CheckpointRef, pictures: bool = False, views: list[RunView] | None = None
    ) -> dict[str, Any] | None:
        """Evaluate a checkpoint that has no eval (the worker died before its final eval);
        ``pictures``: picture it in the same process (its view joins ``views``)."""
        if self.sys.wall() >= self.deadline or self.stop.is_set():
            return None
        flags = ["--eval-only", "--pictures"] if pictures else ["--eval-only"]
        view, exit_kind = self.final_worker(ref.path, "final-eval", flags)
        if views is not None:
            views.append(view)
        self.record(
            Decision(
                DecisionKind.CONTINUE,
                "final_eval",
                f"evaluated {Path(ref.path).name} separately: {exit_kind}",
                {"checkpoint": ref.path},
            ),
            None,
            kind="eval_only",
        )
        return view.evals[-1] if view.evals else None

    def picture_best(self, views: list[RunView]) -> None:
        """Record the pictures of the night's best checkpoint (a ``pictures`` decision): a
        worker's, else drawn now by a ``--pictures`` worker while the window lasts; never
        raises — a failure is recorded as the pictures' problem."""
        best, why = self.night.best_checkpoint, ""
        try:
            found = pictures_of(views, best)
            if found is None and best is None:
                why = "the night wrote no checkpoint"
            elif found is None and (self.sys.wall() >= self.deadline or self.stop.is_set()):
                why = "not drawn: the night was stopped or had reached its deadline"
            elif found is None:
                view, exit_kind = self.final_worker(str(best), PICTURES, ["--pictures"])
                found = pictures_of([view], best)
                why = f"the picturing worker ended: {exit_kind}"
        except Exception as exc:  # pictures never fail a night
            found, why = None, f"{type(exc).__name__}: {exc}"
        evidence = picture_evidence(found, best, why)
        problem = evidence["problem"]
        action = f"no pictures: {problem}" if problem else f"pictured {Path(str(best)).name}"
        self.record(Decision(DecisionKind.CONTINUE, PICTURES, action, evidence), None, PICTURES)

    def final_worker(self, checkpoint: str, name: str, flags: list[str]) -> tuple[RunView, str]:
        """Run one worker process on ``checkpoint`` (``--resume``) with ``flags`` in
        ``runs/<night>/<name>``, supervised (a hang is killed); its events and exit kind."""
        run_dir = self.runs / name
        argv = [
            *self.worker_command(alone=True),  # one process evaluates a checkpoint
            "--config",
            str(Path(self.night.config).resolve()),
            "--run-dir",
            str(run_dir),
            "--resume",
            checkpoint,
            *flags,
        ]
        for item in self.worker_sets():
            argv += ["--set", item]

        sup = Supervisor(
            self.sys,
            self.rb,
            run_dir=run_dir,
            argv=argv,
            cwd=os.getcwd(),
            deadline=self.deadline,
            decide=lambda obs: final_eval_decide(obs, self.rb, self.sys.wall()),
            stop=self.stop,
            env=worker_env(),
        )
        sup.launch()
        out = sup.run()
        return out.view, out.exit_kind
