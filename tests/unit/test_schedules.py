"""LR and EMA schedules are pure functions of progress; epoch cuts keep them continuous."""

import itertools

import pytest

from trainer.config import load_config
from trainer.train.schedules import Cut, Schedule, schedule_from_state, should_eval, should_save

S = Schedule(
    lr=1e-3,
    warmup_epochs=2,
    base_epochs=10,
    min_lr_ratio=0.01,
    warmup_lr_ratio=0.001,
    ema_start=0.996,
    ema_end=1.0,
    ema_hold_epochs=1,
)


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


def test_cut_keeps_what_is_done_and_ends_at_the_floor_at_the_new_total():
    cut = S.with_cut(4.0, 6)
    assert cut.total_epochs == 6 and S.total_epochs == 10
    for e in (0.0, 1.0, 2.0, 3.5, 4.0):
        assert cut.lr_at(e) == S.lr_at(e)  # nothing before the cut changes
    assert cut.lr_at(6) == pytest.approx(1e-5) and cut.ema_at(6) == pytest.approx(1.0)
    # the remaining span [4, 6] maps linearly onto the old remaining span [4, 10]
    assert cut.lr_at(5) == pytest.approx(S.lr_at(7))
    assert cut.ema_at(5) == pytest.approx(S.ema_at(7))


BIG = Schedule(
    lr=1.5e-4,
    warmup_epochs=5,
    base_epochs=50,
    min_lr_ratio=0.01,
    warmup_lr_ratio=0.001,
    ema_start=0.996,
    ema_end=1.0,
    ema_hold_epochs=10,
)
EPS = 1e-9


@pytest.mark.parametrize(
    "cuts",
    [
        [(20.0, 30)],  # the issue's case: 50 → 30 at epoch 20
        [(20.0, 40), (25.5, 30)],  # ladder 50 → 40 → 30, composed
        [(12.25, 45), (20.0, 35), (31.0, 32)],  # three cuts
        [(2.5, 20)],  # before warm-up ends (warm-up at 5)
        [(20.0, 30), (22.0, 36)],  # a later raise stretches what is left
    ],
)
def test_cuts_are_continuous_and_end_at_the_floor(cuts):
    s = BIG
    for at, total in cuts:
        before = s
        s = s.with_cut(at, total)
        # just before / at / just after the cut: same LR (no jump), same EMA
        assert abs(s.lr_at(at - 1e-7) - before.lr_at(at - 1e-7)) < EPS
        assert abs(s.lr_at(at) - before.lr_at(at)) < EPS
        assert abs(s.lr_at(at + 1e-9) - before.lr_at(at)) < 1e-9 * 1.5e-4 + EPS
        assert abs(s.ema_at(at + 1e-9) - before.ema_at(at)) < EPS
    final = cuts[-1][1]
    assert s.total_epochs == final
    assert s.lr_at(final) == pytest.approx(1.5e-6)
    assert s.ema_at(final) == pytest.approx(1.0)
    # continuous everywhere: no step of 0.01 epoch moves the LR by more than the cosine can
    grid = [i * 0.01 for i in range(int(final * 100) + 1)]
    lrs = [s.lr_at(e) for e in grid]
    assert max(abs(a - b) for a, b in itertools.pairwise(lrs)) < 2e-6


def test_a_cut_with_nothing_left_changes_nothing_before_it():
    s = BIG.with_cut(7.0, 7)  # a resume at the end of epoch 7 with training.epochs=7
    assert s.lr_at(6.5) == BIG.lr_at(6.5) and s.lr_at(7.0) == BIG.lr_at(7.0)
    assert s.lr_at(7.5) == pytest.approx(1.5e-6)  # past it: the end of the old curve


def test_the_issues_cut_does_not_halve_the_lr():
    s = BIG.with_cut(20.0, 30)
    assert s.lr_at(20.0 + 1 / 1000) == pytest.approx(BIG.lr_at(20.0), rel=1e-3)
    # the whole-curve remap it replaces would have jumped to the LR of epoch 20/30 of 50
    assert BIG.lr_at(20.0 * 50 / 30) < 0.75 * BIG.lr_at(20.0)


def test_cut_before_warmup_ends_compresses_the_rest_of_warmup():
    s = BIG.with_cut(2.5, 20)  # old remaining span 47.5 onto 17.5
    assert s.lr_at(2.5) == pytest.approx(BIG.lr_at(2.5))
    peak_at = 2.5 + (5 - 2.5) * 17.5 / 47.5
    assert s.lr_at(peak_at) == pytest.approx(1.5e-4)
    assert s.lr_at(peak_at - 0.1) < 1.5e-4


def test_schedule_state_round_trips_through_a_checkpoint_dict():
    cfg = load_config("configs/demo_conservative.yaml", ["training.epochs=6"])
    s = schedule_from_state(cfg, None, 9).with_cut(2.0, 5).with_cut(3.5, 4)
    back = schedule_from_state(cfg, s.state())
    assert back == s and back.cuts == (Cut(2.0, 5), Cut(3.5, 4)) and back.total_epochs == 4
    assert s.state() == {"base_epochs": 9, "total_epochs": 4, "cuts": [[2.0, 5], [3.5, 4]]}
    # an old checkpoint (no schedule) gives its total as the base
    assert schedule_from_state(cfg, None, 7).total_epochs == 7


def test_ema_hold_then_linear():
    assert S.ema_at(0) == S.ema_at(1) == 0.996
    assert S.ema_at(5.5) == pytest.approx(0.998)
    assert S.ema_at(10) == pytest.approx(1.0)


def test_warmup_longer_than_run_is_clamped():
    s = Schedule(1.0, 20, 4, 0.0, 0.0, 0.9, 1.0, 0)
    # warmup 20 > 4 epochs: it is clamped to the run, peaks at its end and the decay has no span
    assert s.lr_at(2) == pytest.approx(0.5)
    assert s.lr_at(3.9) == pytest.approx(0.975)
    assert s.lr_at(4) == pytest.approx(0.0)  # the end of the run: min_lr_ratio 0


@pytest.mark.parametrize(
    "epoch,total,freq,expected",
    [
        (1, 10, 5, False),
        (5, 10, 5, True),
        (10, 10, 3, True),
        (9, 10, 3, True),
        (7, 7, 10, True),
    ],
)
def test_should_eval_and_save(epoch, total, freq, expected):
    assert should_eval(epoch, total, freq) is expected
    assert should_save(epoch, total, freq) is expected
