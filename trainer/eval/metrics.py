"""Evaluation of a frozen encoder on held-out labelled data: kNN, linear probe, collapse checks.

    result = evaluate(model, cfg, (eval_train, eval_test), device, heartbeat=hb)

``model.encode(images [B,3,H,W]) -> [B, D]`` gives pooled, un-normalised features. Features are
extracted once per split (at most ``evaluation.max_train_samples`` / ``max_test_samples``,
a fixed seeded subset so class-ordered folders are sampled evenly) and everything else runs on
CPU tensors:

- kNN (DINO style): cosine similarity, the k nearest training samples vote with weight
  exp(sim / T); top-1 accuracy for each k.
- Linear probe (trainer/eval/linear_probe.py): features standardised with training statistics,
  multinomial logistic regression fitted to convergence with L-BFGS, its L2 strength chosen on
  a held-out part of the training split; seeded (the same inputs give the same score).
- ``feature_std``: mean over dimensions of the per-dimension std across samples. Unlike the
  std over all elements (≈ 1 after a final LayerNorm whatever happens), it goes to ~0 when
  the encoder collapses to one output.
- ``feature_variance``: mean over dimensions of the per-dimension variance across samples (the
  recipe's "feature variance > 0.1" is on this number, not on the std).
- ``effective_rank`` (RankMe): exp(entropy of the normalised singular values) of the centred
  [N, D] feature matrix, N = min(rank_samples, samples available) — held-out features first,
  topped up with probe-training features — so it is never capped by a batch size. SVD on CPU
  in float64 (devices without SVD are irrelevant).

Heartbeats: ``heartbeat()`` is called after every extracted batch, every probe epoch and
between phases, so a supervisor never mistakes a long evaluation for a hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from trainer.eval.linear_probe import fit_probe
from trainer.runtime import device as dev
from trainer.runtime.copies import to_device

Heartbeat = Callable[[], None]
_SUBSET_SEED = 0  # fixed: the same samples are evaluated at every epoch of a run
_KNN_CHUNK_ELEMENTS = 1 << 24  # bounds the per-chunk similarity and vote tensors (elements)


@dataclass
class EvalResult:
    knn: dict[str, float]  # {"1": acc, "5": acc, "20": acc}, top-1 in [0, 1]; {} if disabled
    linear_probe: float | None  # top-1 in [0, 1]; None if disabled
    feature_std: float
    effective_rank: float
    val_loss: float | None
    seconds: float
    num_samples: int  # held-out samples scored
    linear_probe_l2: float | None = None  # the L2 the probe chose on the training split
    feature_variance: float | None = None  # mean per-dimension variance (collapse → 0)

    def as_event_fields(self) -> dict[str, Any]:
        """The fields of the ``eval`` event (trainer/events.py ``Eval``), minus ``epoch``."""
        return {
            "knn": dict(self.knn),
            "linear_probe": self.linear_probe,
            "feature_std": self.feature_std,
            "effective_rank": self.effective_rank,
            "val_loss": self.val_loss,
            "seconds": self.seconds,
            "num_samples": self.num_samples,
            "linear_probe_l2": self.linear_probe_l2,
            "feature_variance": self.feature_variance,
        }


def _beat(heartbeat: Heartbeat | None) -> None:
    if heartbeat is not None:
        heartbeat()


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, dict):
        return batch["image"], torch.as_tensor(batch["label"])
    images, labels = batch[0], batch[1]
    return images, torch.as_tensor(labels)


@torch.no_grad()
def extract_features(
    encode: Callable[[Tensor], Tensor],
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    heartbeat: Heartbeat | None = None,
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """Encode every ``(image, label)`` of ``dataset`` in order: ([N, D] float32, [N] int64) on CPU.

    Features stay on the device until the end (one transfer, no per-batch host sync).
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    for batch in loader:
        images, y = _split_batch(batch)
        out = encode(to_device(images, device))
        if out.ndim != 2 or out.shape[0] != images.shape[0]:
            raise ValueError(f"encode must return [B, D]; got {tuple(out.shape)}")
        feats.append(out.float())
        labels.append(y.long())
        _beat(heartbeat)
    if not feats:
        raise ValueError("evaluation dataset is empty")
    return torch.cat(feats).cpu(), torch.cat(labels).cpu()


def knn_accuracy(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    ks: Sequence[int] = (1, 5, 20),
    temperature: float = 0.07,
) -> dict[str, float]:
    """Weighted kNN top-1 accuracy per k (keys are ``str(k)``); k above N_train uses N_train.

    Each of the k nearest training samples (cosine) adds exp(sim / temperature) to its class;
    the class with the largest sum wins (ties: the lowest class index). Memory is bounded by
    scoring test rows in chunks.
    """
    if not ks:
        return {}
    train_n = torch.nn.functional.normalize(train_f.float(), dim=1)
    test_n = torch.nn.functional.normalize(test_f.float(), dim=1)
    num_classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    k_max = min(max(ks), train_n.shape[0])
    correct = dict.fromkeys(ks, 0)
    per_row = max(train_n.shape[0], k_max * num_classes)
    chunk = max(1, _KNN_CHUNK_ELEMENTS // per_row)
    for start in range(0, test_n.shape[0], chunk):
        sims = test_n[start : start + chunk] @ train_n.T
        top_sim, top_idx = sims.topk(k_max, dim=1)  # sorted, nearest first
        weights = (top_sim / temperature).exp()
        one_hot = torch.nn.functional.one_hot(train_y[top_idx], num_classes).float()
        votes_cum = (one_hot * weights.unsqueeze(-1)).cumsum(dim=1)  # [rows, k_max, classes]
        truth = test_y[start : start + chunk]
        for k in ks:
            pred = votes_cum[:, min(k, k_max) - 1].argmax(dim=1)
            correct[k] += int((pred == truth).sum())
    total = test_n.shape[0]
    return {str(k): correct[k] / total for k in ks}


def feature_std(f: Tensor) -> float:
    """Mean over dimensions of the per-dimension std across samples (collapse → ~0)."""
    if f.shape[0] < 2:
        return 0.0
    return float(f.detach().double().cpu().std(dim=0).mean())


def feature_variance(f: Tensor) -> float:
    """Mean over dimensions of the per-dimension variance across samples (collapse → 0)."""
    if f.shape[0] < 2:
        return 0.0
    return float(f.detach().double().cpu().var(dim=0).mean())


def effective_rank(f: Tensor) -> float:
    """RankMe of ``f`` [N, D]: exp(entropy of the L1-normalised singular values of the centred
    matrix), between 0 (all samples equal) and min(N, D). NaN if ``f`` has non-finite values."""
    x = f.detach().double().cpu()
    if not bool(torch.isfinite(x).all()):
        return float("nan")
    x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    total = float(s.sum())
    if total <= 1e-12 * max(1.0, float(x.abs().max())):
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _subset(dataset: Dataset, limit: int) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if n <= limit:
        return dataset
    gen = torch.Generator().manual_seed(_SUBSET_SEED)
    idx = torch.randperm(n, generator=gen)[:limit].sort().values
    return Subset(dataset, idx.tolist())


def evaluate(
    model: torch.nn.Module,
    cfg: Any,
    eval_data: tuple[Dataset, Dataset],
    device: torch.device,
    *,
    heartbeat: Heartbeat | None = None,
    val_loss_fn: Callable[[], float] | None = None,
) -> EvalResult:
    """Score ``model.encode`` on (labelled train, labelled held-out) with ``cfg.evaluation``.

    Runs the encoder in eval mode under the run's autocast, then restores the model's
    train/eval mode (also on error). ``val_loss_fn()``, if given, is called once in eval mode.
    """
    ev = cfg.evaluation
    t0 = time.monotonic()
    was_training = model.training
    precision = dev.select_precision(
        device, cfg.training.use_amp, getattr(cfg.training, "precision", "auto")
    )
    model.eval()
    try:

        def encode(images: Tensor) -> Tensor:
            with dev.autocast(device, precision):
                return model.encode(images)  # type: ignore[operator]

        train_set = _subset(eval_data[0], ev.max_train_samples)
        test_set = _subset(eval_data[1], ev.max_test_samples)
        workers = cfg.data.num_workers
        train_f, train_y = extract_features(
            encode, train_set, ev.batch_size, device, heartbeat, workers
        )
        test_f, test_y = extract_features(
            encode, test_set, ev.batch_size, device, heartbeat, workers
        )
        knn: dict[str, float] = {}
        if ev.knn.enabled:
            knn = knn_accuracy(
                train_f, train_y, test_f, test_y, ev.knn.k_values, ev.knn.temperature
            )
            _beat(heartbeat)
        probe: float | None = None
        probe_l2: float | None = None
        if ev.linear_probe.enabled:
            lp = ev.linear_probe
            fitted = fit_probe(
                train_f,
                train_y,
                l2_grid=lp.l2_grid,
                val_fraction=lp.val_fraction,
                max_iter=lp.max_iter,
                seed=cfg.experiment.seed,
                heartbeat=heartbeat,
            )
            probe, probe_l2 = fitted.accuracy(test_f, test_y), fitted.l2
        rank_f = torch.cat([test_f, train_f])[: ev.rank_samples]
        std = feature_std(rank_f)
        var = feature_variance(rank_f)
        rank = effective_rank(rank_f)
        _beat(heartbeat)
        val_loss = float(val_loss_fn()) if val_loss_fn is not None else None
    finally:
        model.train(was_training)
    return EvalResult(
        knn=knn,
        linear_probe=probe,
        feature_std=std,
        effective_rank=rank,
        val_loss=val_loss,
        seconds=time.monotonic() - t0,
        num_samples=int(test_f.shape[0]),
        linear_probe_l2=probe_l2,
        feature_variance=var,
    )
