"""The H-JEPA loss terms, all computed in float32 with autocast off.

- :func:`level_loss` — the JEPA distance (smooth-L1 or MSE) between predictions and targets of
  the M target blocks at hierarchy level ``l``: level 0 compares patch tokens; level ``l > 0``
  first average-pools each block **spatially** (not over the raster order of the tokens) into
  ``ceil(h/2^l) × ceil(w/2^l)`` adaptive-pooling cells of its (h, w) box, through the
  per-batch matrix ``Batch.tgt_pool[l-1]`` (fixed shape, so one compiled graph serves a run).
- :func:`vicreg_loss` — VICReg (Bardes et al. 2022): variance hinge on the per-dimension std
  across the batch, off-diagonal covariance, and (given a second view) invariance. Applied by
  the model to pooled **encoder** features; applying it to predictions, as upstream did, left
  the encoder free to collapse.
- :func:`nt_xent` — SimCLR's normalised-temperature cross entropy between two views: for each
  of the 2N embeddings its other view is the positive, the remaining 2N-2 are negatives.

Every function returns a 0-dim float32 tensor and performs no host synchronisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from trainer.config import VICRegCoeffs


@contextlib.contextmanager
def full_precision(x: torch.Tensor) -> Iterator[None]:
    """Disable autocast for x's device type (losses must not run in bf16/fp16)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


def pool_level(x: torch.Tensor, pool: torch.Tensor | None) -> torch.Tensor:
    """[B, M, Nt, D] block tokens → [B, M, Nt, D] level cells: ``pool`` [Nt, Nt] is the
    level's averaging matrix from trainer.data.masks.pool_matrices (rows past the block's cell count
    are zero), None for level 0 (tokens unchanged). Static shapes: one matmul, no host sync."""
    if pool is None:
        return x
    return torch.einsum("cn,bmnd->bmcd", pool.to(x.dtype), x)


def jepa_distance(
    pred: torch.Tensor, target: torch.Tensor, kind: str, count: torch.Tensor | None = None
) -> torch.Tensor:
    """Smooth-L1 (beta 1) or MSE summed over all elements and divided by ``count`` elements
    (default: all of them, i.e. the mean), in float32."""
    with full_precision(pred):
        pred, target = pred.float(), target.float()
        if kind == "smoothl1":
            total = F.smooth_l1_loss(pred, target, reduction="sum")
        elif kind == "mse":
            total = F.mse_loss(pred, target, reduction="sum")
        else:
            raise ValueError(f"unknown JEPA distance {kind!r} (smoothl1 | mse)")
        return total / (pred.numel() if count is None else count)


def level_loss(
    pred: torch.Tensor, target: torch.Tensor, pool: torch.Tensor | None, kind: str
) -> torch.Tensor:
    """JEPA distance at one hierarchy level: the mean over the level's cells (every block's
    real cells, not the zero padding) of pred/target [B, M, Nt, D] pooled by ``pool``."""
    with full_precision(pred):
        p, t = pool_level(pred.float(), pool), pool_level(target.float(), pool)
        if pool is None:
            return jepa_distance(p, t, kind)
        b, m, _, d = p.shape
        cells = (pool.sum(dim=1) > 0).sum().float()
        return jepa_distance(p, t, kind, cells * (b * m * d))


def variance_term(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """mean_d relu(1 - std_d): ≈1 for collapsed features, 0 once every dim has std ≥ 1."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances divided by the dimension."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = (zc.T @ zc) / (n - 1)
    off = cov - torch.diag_embed(torch.diagonal(cov))
    return off.pow(2).sum() / d


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor | None, coeffs: VICRegCoeffs) -> torch.Tensor:
    """``std_coeff·var + cov_coeff·cov (+ sim_coeff·MSE(z1, z2))`` on [N, D] embeddings.

    Variance and covariance are taken on z1, and on z2 too when z2 carries gradients (a view
    encoded by the trainable encoder); a gradient-free z2 only enters the invariance term.
    """
    if z1.size(0) < 2:
        raise ValueError("VICReg needs a batch of at least 2 samples")
    with full_precision(z1):
        z1 = z1.float()
        branches = [z1]
        if z2 is not None and z2.requires_grad:
            branches.append(z2.float())
        var = sum(variance_term(z) for z in branches) / len(branches)
        cov = sum(covariance_term(z) for z in branches) / len(branches)
        loss = coeffs.std_coeff * var + coeffs.cov_coeff * cov
        if z2 is not None:
            loss = loss + coeffs.sim_coeff * F.mse_loss(z1, z2.float())
        return loss


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, cosine: bool = True
) -> torch.Tensor:
    """NT-Xent over 2N embeddings [N, D] × 2; similarity is cosine, or the raw dot product."""
    if z1.shape != z2.shape:
        raise ValueError(f"views differ in shape: {tuple(z1.shape)} vs {tuple(z2.shape)}")
    n = z1.size(0)
    with full_precision(z1):
        z = torch.cat([z1.float(), z2.float()], dim=0)
        if cosine:
            z = F.normalize(z, dim=-1)
        logits = (z @ z.T) / temperature
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        idx = torch.arange(n, device=z.device)
        positives = torch.cat([idx + n, idx])
        return F.cross_entropy(logits, positives)
