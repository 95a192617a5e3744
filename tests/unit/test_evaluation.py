"""Evaluation metrics on synthetic features: kNN, feature std, effective rank, and evaluate()
end to end (the linear probe itself: test_probe.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from trainer.config import Config
from trainer.eval.metrics import (
    EvalResult,
    effective_rank,
    evaluate,
    extract_features,
    feature_std,
    feature_variance,
    knn_accuracy,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def clusters(n: int, dim: int = 32, classes: int = 10, spread: float = 0.3, seed: int = 0):
    """Gaussian clusters around fixed random centres (the same for every seed): separable
    when spread is small; ``seed`` draws the samples."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234))
    centres = torch.nn.functional.normalize(centres, dim=1) * 5.0
    y = torch.arange(n) % classes
    x = centres[y] + spread * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return x, y


# -- kNN ----------------------------------------------------------------------------------------
def test_knn_separable_clusters_near_perfect():
    train_f, train_y = clusters(1000, seed=0)
    test_f, test_y = clusters(500, seed=1)
    acc = knn_accuracy(train_f, train_y, test_f, test_y)
    assert set(acc) == {"1", "5", "20"}
    assert all(v >= 0.99 for v in acc.values()), acc


def test_knn_random_labels_is_chance():
    gen = torch.Generator().manual_seed(3)
    train_f, test_f = torch.randn(2000, 16, generator=gen), torch.randn(1000, 16, generator=gen)
    train_y = torch.randint(0, 10, (2000,), generator=gen)
    test_y = torch.randint(0, 10, (1000,), generator=gen)
    acc = knn_accuracy(train_f, train_y, test_f, test_y)
    assert all(0.05 <= v <= 0.16 for v in acc.values()), acc


def test_knn_weighted_vote_hand_made():
    # Test point along x. Neighbours by cosine: A (class 0, sim 1.0), then B and C (class 1,
    # sim 0.8 each), then D (class 2, sim -1).
    train_f = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [-1.0, 0.0]])
    train_y = torch.tensor([0, 1, 1, 2])
    test_f = torch.tensor([[2.0, 0.0]])
    test_y = torch.tensor([0])
    # k=1: class 0. k=3 at T=1: class 0 gets e^1 = 2.72, class 1 gets 2e^0.8 = 4.45 -> wrong.
    # k=3 at T=0.07: e^(1/0.07) dwarfs 2e^(0.8/0.07) -> class 0 wins, weighting matters.
    assert knn_accuracy(train_f, train_y, test_f, test_y, ks=(1, 3), temperature=1.0) == {
        "1": 1.0,
        "3": 0.0,
    }
    assert knn_accuracy(train_f, train_y, test_f, test_y, ks=(3,), temperature=0.07) == {"3": 1.0}
    # k larger than the training set uses every sample instead of failing
    assert knn_accuracy(train_f, train_y, test_f, test_y, ks=(50,), temperature=1.0)["50"] == 0.0


def test_knn_chunking_does_not_change_result(monkeypatch):
    train_f, train_y = clusters(600, spread=3.0, seed=0)
    test_f, test_y = clusters(300, spread=3.0, seed=1)
    whole = knn_accuracy(train_f, train_y, test_f, test_y)
    monkeypatch.setattr("trainer.eval.metrics._KNN_CHUNK_ELEMENTS", 7 * 600)
    assert knn_accuracy(train_f, train_y, test_f, test_y) == whole


# -- collapse checks ----------------------------------------------------------------------------
def test_feature_std_zero_when_collapsed_and_blind_to_layernorm_trick():
    collapsed = torch.randn(1, 64).repeat(500, 1)  # every sample the same, large norm
    assert feature_std(collapsed) < 1e-6
    healthy = torch.randn(500, 64) * 2.0
    assert feature_std(healthy) == pytest.approx(2.0, rel=0.1)


def test_feature_variance_is_the_variance_the_recipe_thresholds():
    collapsed = torch.randn(1, 64).repeat(500, 1)
    assert feature_variance(collapsed) < 1e-9
    healthy = torch.randn(500, 64, generator=torch.Generator().manual_seed(0)) * 0.3
    # std 0.3 passes "std > 0.1" but its variance 0.09 fails the recipe's "variance > 0.1"
    assert feature_std(healthy) > 0.1 and feature_variance(healthy) == pytest.approx(0.09, rel=0.1)


def test_effective_rank_isotropic_close_to_dim():
    x = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0))
    assert 60.0 <= effective_rank(x) <= 64.0


def test_effective_rank_of_rank5_data_is_about_5():
    gen = torch.Generator().manual_seed(0)
    x = (
        torch.randn(2000, 5, generator=gen)
        @ torch.linalg.qr(torch.randn(64, 5, generator=gen))[0].T
    )
    assert 4.5 <= effective_rank(x) <= 5.0


def test_effective_rank_collapsed_and_nonfinite():
    assert effective_rank(torch.ones(100, 16) * 3.0) == 0.0
    bad = torch.randn(100, 16)
    bad[3, 2] = float("nan")
    assert math.isnan(effective_rank(bad))


# -- extraction and the full evaluation ---------------------------------------------------------
class ProjectionEncoder(torch.nn.Module):
    """A fixed random projection of flattened images; counts the batch sizes it saw."""

    def __init__(self, in_dim: int, dim: int = 64) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(in_dim, dim)
        self.batches: list[int] = []

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(images.shape[0])
        return self.proj(images.flatten(1))


def image_clusters(n: int, classes: int = 5, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(100)  # shared class prototypes
    protos = torch.randn(classes, 3, 8, 8, generator=gen)
    noise = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = protos[y] + 0.5 * torch.randn(n, 3, 8, 8, generator=noise)
    return TensorDataset(x, y)


def test_rank_not_capped_by_batch_size():
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(2000, 3, 8, 8), torch.zeros(2000, dtype=torch.long))
    enc = ProjectionEncoder(192, 128)
    beats: list[int] = []
    with torch.no_grad():
        f, y = extract_features(enc.encode, ds, 32, torch.device("cpu"), lambda: beats.append(1))
    assert f.shape == (2000, 128) and y.shape == (2000,)
    assert max(enc.batches) == 32
    assert len(beats) == math.ceil(2000 / 32)
    assert effective_rank(f) > 100.0


def small_cfg(**evaluation) -> Config:
    return Config.model_validate(
        {
            "data": {"dataset": "synthetic", "num_workers": 0},
            "training": {"use_amp": True},
            "evaluation": {
                "batch_size": 32,
                "max_train_samples": 400,
                "max_test_samples": 200,
                "rank_samples": 300,
                "linear_probe": {"max_iter": 100},
                **evaluation,
            },
        }
    )


def test_evaluate_end_to_end_restores_mode_and_beats():
    enc = ProjectionEncoder(192)
    enc.train()
    beats: list[int] = []
    result = evaluate(
        enc,
        small_cfg(),
        (image_clusters(1000, seed=1), image_clusters(300, seed=2)),
        torch.device("cpu"),
        heartbeat=lambda: beats.append(1),
        val_loss_fn=lambda: 0.25,
    )
    assert isinstance(result, EvalResult)
    assert enc.training  # mode restored
    assert result.num_samples == 200  # max_test_samples honoured
    assert set(result.knn) == {"1", "5", "20"} and min(result.knn.values()) > 0.9
    assert result.linear_probe is not None and result.linear_probe > 0.9
    assert result.val_loss == 0.25
    assert result.feature_std > 0.1
    assert 30.0 < result.effective_rank <= 64.0
    assert len(beats) >= 400 // 32 + 200 // 32
    fields = result.as_event_fields()
    assert fields["knn"] == result.knn and fields["num_samples"] == 200


def test_the_probe_is_chosen_without_the_test_labels():
    """evaluate() hands the test split to the probe only to score it: scrambling the test
    labels changes the score, never the L2 chosen or the fit behind it."""
    enc = ProjectionEncoder(192)
    train, test = image_clusters(400, seed=1), image_clusters(200, seed=2)
    x, y = test.tensors
    scrambled = TensorDataset(x, (y + 1) % 5)
    cpu = torch.device("cpu")
    right = evaluate(enc, small_cfg(), (train, test), cpu)
    wrong = evaluate(enc, small_cfg(), (train, scrambled), cpu)
    assert right.linear_probe_l2 is not None and right.linear_probe_l2 == wrong.linear_probe_l2
    assert right.as_event_fields()["linear_probe_l2"] == right.linear_probe_l2
    assert right.linear_probe is not None and wrong.linear_probe is not None
    assert right.linear_probe > 0.9 and wrong.linear_probe < 0.1  # same predictions, new labels


def test_evaluate_with_probes_disabled_and_model_in_eval_mode():
    enc = ProjectionEncoder(192)
    enc.eval()
    result = evaluate(
        enc,
        small_cfg(knn={"enabled": False}, linear_probe={"enabled": False}),
        (image_clusters(100, seed=1), image_clusters(50, seed=2)),
        torch.device("cpu"),
    )
    assert not enc.training
    assert result.knn == {} and result.linear_probe is None and result.val_loss is None
    assert result.num_samples == 50


def test_evaluate_restores_mode_on_error():
    class Broken(ProjectionEncoder):
        def encode(self, images: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    enc = Broken(192)
    enc.train()
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(enc, small_cfg(), (image_clusters(50), image_clusters(50)), torch.device("cpu"))
    assert enc.training
