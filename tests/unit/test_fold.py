"""The one event fold: what the supervisor, the night runner, the status screen and the report
all read of a worker's events, and the one forecast they all show."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.fold import RunFold, metrics_of
from orchestrator.policy import forecast


def ev(type_: str, ts: float, **kw: Any) -> dict[str, Any]:
    return {"type": type_, "ts": ts, **kw}


def run(*events: dict[str, Any], attempt: int = 1, read_mono: float | None = None) -> RunFold:
    fold = RunFold()
    fold.feed(attempt, events, read_mono)
    return fold


def test_a_resumed_attempt_counts_from_its_checkpoint() -> None:
    v = run(ev("started", 100.0, start_epoch=4, start_step=300, epochs=6, mono=50.0)).view()
    assert (v.epoch, v.epochs_done, v.step, v.total_epochs) == (4, 3, 300, 6)
    assert v.phase == "startup" and v.progress_mono == 50.0
    fresh = run(ev("started", 100.0, start_epoch=1, epochs=6)).view()
    assert fresh.epochs_done is None and fresh.epoch == 1


def test_progress_is_the_newest_progress_sign_not_the_newest_heartbeat() -> None:
    fold = run(
        ev("started", 100.0, mono=10.0, epochs=2),
        ev("step", 105.0, mono=15.0, step=1, epoch=1, loss=1.0, step_s=2.0),
        ev("heartbeat", 200.0, mono=110.0, phase="eval", progress_age_s=80.0),
    )
    v = fold.view()
    assert v.progress_mono == 30.0 and v.progress_ts == 120.0  # the heartbeat minus its age
    assert v.last_heartbeat_ts == 200.0 and v.phase == "eval" and v.step_s == 2.0
    # an event without ``mono`` counts when it was read
    late = run(ev("step", 5.0, step=2, loss=1.0), read_mono=77.0).view()
    assert late.progress_mono == 77.0


def test_times_results_and_endings_per_attempt() -> None:
    fold = RunFold()
    fold.feed(
        1,
        [
            ev("started", 0.0, epochs=3),
            ev("eval", 1.0, epoch=0, seconds=4.0, knn={"20": 0.1}),
            ev("epoch_end", 10.0, epoch=1, seconds=9.0, total_epochs=3),
            ev("checkpoint", 11.0, epoch=1, step=8, path="a.pt", seconds=0.5),
            ev("eval", 12.0, epoch=1, seconds=2.0, knn={20: 0.3}),
            ev("best", 12.5, path="a.pt"),
            ev("fatal", 13.0, kind="nonfinite", message="loss nan"),
        ],
    )
    v = fold.view()
    assert v.fatal and v.fatal["attempt"] == 1 and v.finished is None
    fold.feed(
        2,
        [
            ev("started", 20.0, epochs=3, start_epoch=2),
            ev("control", 21.0, epochs=2),
            ev("epoch_end", 30.0, epoch=2, seconds=8.0, total_epochs=2),
            ev("finished", 31.0, reason="completed"),
        ],
    )
    v = fold.view()
    assert v.fatal is None and v.finished and v.finished["attempt"] == 2
    assert len(v.fatals) == 1 and v.total_epochs == 2 and v.epochs_done == 2
    assert v.epoch_seconds == (9.0, 8.0) and v.eval_seconds == (2.0,)  # epoch 0 is no cost
    assert v.checkpoint_seconds == (0.5,) and v.epoch_end_ts == 30.0
    assert [b["path"] for b in v.bests] == ["a.pt"]
    m = metrics_of(v.evals[-1])
    assert m.knn == {"20": 0.3} and m.epoch == 1


def test_a_live_cut_is_in_force_before_the_worker_echoes_it() -> None:
    fold = run(ev("started", 0.0, epochs=10))
    fold.cut_epochs(6)
    assert fold.view().total_epochs == 6


def test_history_bounds_the_series_not_the_results() -> None:
    fold = RunFold(history=3)
    fold.feed(1, [ev("step", float(i), step=i, epoch=1, loss=1.0) for i in range(10)])
    fold.feed(1, [ev("eval", 20.0 + i, epoch=i) for i in range(5)])
    v = fold.view()
    assert [s.step for s in v.steps] == [7, 8, 9] and len(v.evals) == 5


def test_one_forecast_model() -> None:
    # two measured epochs (the first carries warm-up and is dropped), one eval of 5 s
    end = forecast.finish(
        [30.0, 20.0],
        [5.0],
        [1.0],
        epoch_end_ts=1000.0,
        epochs_done=2,
        total_epochs=5,
        final_eval_reserve_s=60.0,
    )
    per = 20.0 + (5.0 + 1.0) / 2
    assert end == pytest.approx(1000.0 + 3 * per + 5.0)  # the measured eval, not the reserve
    before_eval = forecast.finish([20.0], [], [], 1000.0, 1, 3, final_eval_reserve_s=60.0)
    assert before_eval == pytest.approx(1000.0 + 2 * 20.0 + 60.0)
    assert forecast.finish([], [], [], None, 0, 3, 60.0) is None
    assert forecast.pace_needed(
        2000.0, 60.0, now=1000.0, epochs_done=1, total_epochs=5
    ) == pytest.approx(235.0)
    assert forecast.pace_needed(1000.0, 60.0, now=1000.0, epochs_done=1, total_epochs=5) is None
    assert forecast.pace_needed(2000.0, 60.0, now=1000.0, epochs_done=5, total_epochs=5) is None
