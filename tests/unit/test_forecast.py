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
