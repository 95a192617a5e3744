"""LR and EMA schedules are pure functions of progress."""

import itertools
import math

import pytest

from trainer.schedules import Schedule, should_eval, should_save

S = Schedule(lr=1e-3, warmup_epochs=2, total_epochs=10, min_lr_ratio=0.01, warmup_lr_ratio=0.001,
             ema_start=0.996, ema_end=1.0, ema_hold_epochs=1)


def test_warmup_starts_low_and_reaches_peak():
    assert S.lr_at(0) == pytest.approx(1e-6)
    assert S.lr_at(1) == pytest.approx(1e-3 * (0.001 + 0.999 * 0.5))
    assert S.lr_at(2) == pytest.approx(1e-3)


def test_cosine_ends_at_floor_and_is_monotone_after_warmup():
    values = [S.lr_at(2 + i * 0.5) for i in range(17)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert S.lr_at(10) == pytest.approx(1e-5)
    assert S.lr_at(12) == pytest.approx(1e-5)
    assert S.lr_at(6) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)


def test_epoch_cut_rescales_to_end_at_new_last_epoch():
    cut = S.with_total(6)
    assert cut.lr_at(6) == pytest.approx(1e-5)
    assert cut.lr_at(4) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert cut.ema_at(6) == pytest.approx(1.0)
    assert cut.lr_at(1) == S.lr_at(1)  # warm-up unchanged


def test_ema_hold_then_linear():
    assert S.ema_at(0) == S.ema_at(1) == 0.996
    assert S.ema_at(5.5) == pytest.approx(0.998)
    assert S.ema_at(10) == pytest.approx(1.0)


def test_warmup_longer_than_run_is_clamped():
    s = Schedule(1.0, 20, 4, 0.0, 0.0, 0.9, 1.0, 0)
    assert s.lr_at(4) == pytest.approx(0.0) or math.isfinite(s.lr_at(4))
    assert s.lr_at(2) == pytest.approx(0.5)


@pytest.mark.parametrize("epoch,total,freq,expected", [
    (1, 10, 5, False), (5, 10, 5, True), (10, 10, 3, True), (9, 10, 3, True), (7, 7, 10, True),
])
def test_should_eval_and_save(epoch, total, freq, expected):
    assert should_eval(epoch, total, freq) is expected
    assert should_save(epoch, total, freq) is expected
