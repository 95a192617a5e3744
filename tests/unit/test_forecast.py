"""Forecast arithmetic: epoch cost, projected end, what fits, errors."""

from __future__ import annotations

import pytest

from orchestrator.policy import forecast


def test_epoch_cost_drops_warmup_epoch_and_spreads_eval() -> None:
    per = forecast.epoch_cost(
        [100.0, 60.0, 62.0], eval_seconds=[30.0], checkpoint_seconds=[3.0], epochs_done=3
    )
    assert per == pytest.approx(61.0 + 33.0 / 3)
    assert forecast.epoch_cost([80.0]) == 80.0
    assert forecast.epoch_cost([]) is None


def test_projection_and_fit() -> None:
    end = forecast.projected_training_end(
        anchor=1000.0, epochs_done=2, total_epochs=10, per_epoch_s=50.0
    )
    assert end == 1400.0
    assert forecast.projected_finish(1000.0, 2, 10, 50.0, final_eval_s=20.0) == 1420.0
    assert forecast.epochs_that_fit(1000.0, 2, 50.0, limit=1260.0) == 7
    assert forecast.epochs_that_fit(1000.0, 2, 50.0, limit=900.0) == 2


def test_forecast_errors_sign() -> None:
    assert forecast.forecast_errors([1100.0, 1010.0, 990.0], actual_finish=1000.0) == [
        100.0,
        10.0,
        -10.0,
    ]


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [([], None), ([60.0], 60.0), ([90.0, 60.0, 60.0, 30.0], 50.0)],  # the newest 3
)
def test_recent_train_s(seconds: list[float], expected: float | None) -> None:
    assert forecast.recent_train_s(seconds) == expected


@pytest.mark.parametrize(
    ("epochs", "eval_every", "expected"),
    [
        (1, 1, 1 * (100 + 5) + 2 * 20 + 60),  # baseline eval + one periodic
        (10, 5, 10 * (100 + 5) + 3 * 20 + 60),  # baseline + epochs 5 and 10
        (4, 5, 4 * (100 + 5) + 1 * 20 + 60),  # baseline only
    ],
)
def test_planned_night_s(epochs: int, eval_every: int, expected: float) -> None:
    got = forecast.planned_night_s(
        epochs, epoch_s=100, eval_s=20, eval_every=eval_every, checkpoint_s=5, final_eval_s=60
    )
    assert got == expected


def test_preflight_fits_epochs_with_the_forecasts_cost_model() -> None:
    from orchestrator.preflight.fit import fit_epochs

    kw = {"epoch_s": 100.0, "eval_s": 20.0, "eval_every": 5, "checkpoint_s": 5.0}
    n = fit_epochs(recipe_epochs=50, window_s=2000, final_eval_s=60, margin=0.1, **kw)
    assert forecast.planned_night_s(n, final_eval_s=60, **kw) <= 1800
    assert forecast.planned_night_s(n + 1, final_eval_s=60, **kw) > 1800


def test_one_pace_needed_from_now_or_from_the_window_start() -> None:
    # 8 h window, 20 min reserve, 50 epochs: from the start; then 10 done, 2 h in
    assert forecast.pace_needed(8 * 3600, 1200, 0, 0, 50) == (8 * 3600 - 1200) / 50
    assert forecast.pace_needed(8 * 3600, 1200, 2 * 3600, 10, 50) == (6 * 3600 - 1200) / 40
    assert forecast.pace_needed(8 * 3600, 1200, 8 * 3600, 10, 50) is None  # time ran out
