"""The linear probe (trainer/eval/linear_probe.py): converges to the regularised optimum, chooses
its L2 on the training split alone, deterministic, scores chance on noise, reports liveness."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from trainer.config import ConfigError, load_config
from trainer.eval.linear_probe import DEFAULT_L2_GRID, cost_bound_s, fit_probe

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _noisy_one_direction(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Label = sign of the first feature, 10% flipped; the other d-1 features are noise."""
    g = _gen(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long()
    flip = torch.rand(n, generator=g) < 0.1
    y[flip] = 1 - y[flip]
    return x, y


@pytest.mark.slow
def test_separable_scores_high_and_same_inputs_give_same_score():
    g = _gen(0)
    w = torch.randn(24, 5, generator=g)
    x_train, x_test = torch.randn(1000, 24, generator=g), torch.randn(500, 24, generator=g)
    y_train, y_test = (x_train @ w).argmax(1), (x_test @ w).argmax(1)
    assert fit_probe(x_train, y_train).accuracy(x_test, y_test) >= 0.93
    once, again = fit_probe(x_train, y_train, seed=7), fit_probe(x_train, y_train, seed=7)
    assert once.accuracy(x_test, y_test) == again.accuracy(x_test, y_test)
    assert torch.equal(once.weight, again.weight) and once.l2 == again.l2


def test_noise_scores_chance():
    g = _gen(1)
    x_train, x_test = torch.randn(1000, 24, generator=g), torch.randn(1000, 24, generator=g)
    y_train = torch.randint(0, 10, (1000,), generator=g)
    y_test = torch.randint(0, 10, (1000,), generator=g)
    assert 0.05 <= fit_probe(x_train, y_train).accuracy(x_test, y_test) <= 0.16


def test_converges_to_scikit_learns_optimum_at_the_same_penalty():
    """A budget-limited optimiser stops short of the optimum; this one reaches it: the weights
    equal scikit-learn's multinomial logistic regression (mean CE + l2/2·||W||² is sklearn's
    objective with C = 1 / (l2 · n)) on the same standardised features."""
    g = _gen(2)
    n, d, classes = 600, 20, 3
    centres = torch.randn(classes, d, generator=g) * 0.7
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, d, generator=g)
    x = (x - x.mean(0)) / x.std(0)  # already standardised: the probe's own step is ~identity
    l2 = 1e-3
    probe = fit_probe(x, y, l2_grid=[l2])
    ref = LogisticRegression(C=1.0 / (l2 * n), max_iter=10_000, tol=1e-10).fit(x.numpy(), y.numpy())
    ref_w = torch.from_numpy(ref.coef_.T).float()
    # softmax weights are defined up to a shift per feature; compare the centred ones
    ours = probe.weight - probe.weight.mean(1, keepdim=True)
    theirs = ref_w - ref_w.mean(1, keepdim=True)
    assert (ours - theirs).abs().max() < 0.02 * theirs.abs().max()
    assert probe.l2 == l2 and probe.val_accuracy == {}  # one value: nothing to choose
    # and stopping after two iterations (an under-fitted probe) is measurably elsewhere
    early = fit_probe(x, y, l2_grid=[l2], max_iter=2)
    assert (early.weight - early.weight.mean(1, keepdim=True) - theirs).abs().max() > 0.1 * (
        theirs.abs().max()
    )


@pytest.mark.slow
def test_l2_is_chosen_on_the_training_split_and_the_choice_helps():
    # many noise dimensions, few samples: the weakest penalty over-fits, the strongest wins
    x, y = _noisy_one_direction(1000, 300, seed=0)
    probe = fit_probe(x, y)
    assert probe.l2 == max(DEFAULT_L2_GRID)
    assert set(probe.val_accuracy) == set(DEFAULT_L2_GRID)
    x_new, y_new = _noisy_one_direction(2000, 300, seed=9)
    weakest = fit_probe(x, y, l2_grid=[min(DEFAULT_L2_GRID)])
    assert probe.accuracy(x_new, y_new) > weakest.accuracy(x_new, y_new) + 0.03
    # plenty of samples, a clean linear rule: a weak penalty wins
    g = _gen(3)
    x, w = torch.randn(4000, 10, generator=g), torch.randn(10, 4, generator=g)
    assert fit_probe(x, (x @ w).argmax(1)).l2 <= 1e-4


def test_heartbeat_during_every_fit_and_tiny_sets_fit_without_selection():
    beats: list[int] = []
    x, y = _noisy_one_direction(400, 16, seed=6)
    fit_probe(x, y, l2_grid=[1e-3, 1e-2, 1e-1], heartbeat=lambda: beats.append(1))
    assert len(beats) >= 4  # at least once per fit: three to choose, one to refit
    tiny = fit_probe(x[:2], y[:2], l2_grid=[1e-4, 1e-2, 1e-1])
    assert tiny.l2 == 1e-2 and tiny.val_accuracy == {}  # nothing to hold out: the grid's middle


def test_bad_arguments_are_refused():
    x, y = _noisy_one_direction(50, 4, seed=7)
    with pytest.raises(ValueError, match="l2_grid"):
        fit_probe(x, y, l2_grid=[])
    with pytest.raises(ValueError, match="val_fraction"):
        fit_probe(x, y, val_fraction=1.0)


def test_cost_bound_grows_with_the_size_of_the_problem():
    small = cost_bound_s(1000, 96, 10, 6, 500)
    big = cost_bound_s(10000, 384, 100, 6, 500)
    assert 0 < small < big
    assert cost_bound_s(1000, 96, 10, 1, 500) < small  # one value: no selection fits


def test_config_keys_and_retired_ones_are_named(tmp_path):
    cfg = load_config("configs/demo_conservative.yaml")
    assert cfg.evaluation.linear_probe.l2_grid == list(DEFAULT_L2_GRID)
    with pytest.raises(ConfigError, match=r"linear_probe\.epochs: key no longer used.*max_iter"):
        load_config("configs/demo_conservative.yaml", ["evaluation.linear_probe.epochs=30"])
    for bad in ("evaluation.linear_probe.l2_grid=[]", "evaluation.linear_probe.l2_grid=[-1]"):
        with pytest.raises(ConfigError, match="l2_grid"):
            load_config("configs/demo_conservative.yaml", [bad])
