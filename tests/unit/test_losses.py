"""Loss terms: VICReg notices collapse, NT-Xent tells matching views apart, pooling is spatial."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import VICRegCoeffs
from trainer.data.masks import pool_matrices
from trainer.model.losses import (
    covariance_term,
    level_loss,
    nt_xent,
    pool_level,
    variance_term,
    vicreg_loss,
)

VAR_ONLY = VICRegCoeffs(sim_coeff=0.0, std_coeff=25.0, cov_coeff=0.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_vicreg_variance_is_large_for_collapsed_and_zero_for_spread_features():
    base = torch.randn(1, 64, generator=gen())
    collapsed = base.repeat(32, 1) + 1e-3 * torch.randn(32, 64, generator=gen(1))
    spread = 2.0 * torch.randn(32, 64, generator=gen(2))
    assert variance_term(collapsed).item() > 0.95
    assert vicreg_loss(collapsed, None, VAR_ONLY).item() > 0.95 * 25
    assert variance_term(spread).item() < 0.01
    assert vicreg_loss(spread, None, VAR_ONLY).item() < 0.25


def test_vicreg_covariance_penalises_redundant_dimensions():
    z = torch.randn(256, 8, generator=gen())
    redundant = z.clone()
    redundant[:, 1:] = z[:, :1]  # every dimension a copy of the first
    assert covariance_term(redundant).item() > 50 * covariance_term(z).item()


def test_vicreg_invariance_only_with_a_second_view():
    z1 = torch.randn(16, 8, generator=gen())
    z2 = z1 + 0.5 * torch.randn(16, 8, generator=gen(1))
    coeffs = VICRegCoeffs(sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0)
    alone = vicreg_loss(z1, None, coeffs)
    same = vicreg_loss(z1, z1.clone(), coeffs)
    paired = vicreg_loss(z1, z2, coeffs)
    assert same.item() == pytest.approx(alone.item(), abs=1e-6)
    expected = alone + 25.0 * torch.nn.functional.mse_loss(z1, z2)
    assert paired.item() == pytest.approx(expected.item(), rel=1e-5)


def test_vicreg_rejects_a_batch_of_one():
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(torch.randn(1, 4), None, VAR_ONLY)


def test_nt_xent_low_for_matching_views_high_for_shuffled():
    z1 = torch.randn(32, 64, generator=gen())
    z2 = z1 + 0.05 * torch.randn(32, 64, generator=gen(1))
    shuffled = z2[torch.randperm(32, generator=gen(2))]
    matching = nt_xent(z1, z2, temperature=0.1).item()
    mismatched = nt_xent(z1, shuffled, temperature=0.1).item()
    assert matching < 0.05
    assert mismatched > math.log(2 * 32 - 1) - 0.5
    dot = nt_xent(z1, z2, temperature=0.1, cosine=False).item()
    assert dot != pytest.approx(matching)


def pool(nt: int, w: int, level: int) -> torch.Tensor:
    return torch.from_numpy(pool_matrices(nt, w))[level - 1]


def test_pool_level_pools_over_space_not_raster_order():
    # one 2x4 block whose values are its column index: spatial 2x pooling gives 1x2 cells with
    # the means of columns {0,1} and {2,3}; pooling raster pairs would give 0.5, 2.5, 0.5, 2.5.
    cols = torch.arange(4.0).repeat(2)  # raster order of a 2x4 block
    x = cols.view(1, 1, 8, 1)
    pooled = pool_level(x, pool(8, 4, 1))
    assert pooled.shape == (1, 1, 8, 1), "static shape: padded to the token count"
    assert pooled.flatten().tolist() == [0.5, 2.5] + [0.0] * 6
    coarser = pool_level(x, pool(8, 4, 2))  # ceil(2/4) x ceil(4/4) = 1x1
    assert coarser.flatten().tolist() == [1.5] + [0.0] * 7
    assert torch.equal(pool_level(x, None), x)


def test_ragged_block_pools_only_the_tokens_it_has():
    # 7 tokens of a 3-wide box: rows [0 1 2], [3 4 5], [6]; level 1 = 2x2 cells over the 3x3
    # box (adaptive bins of 3 into 2: {0,1} and {1,2}, rows and columns alike).
    x = torch.arange(7.0).view(1, 1, 7, 1)
    got = pool_level(x, pool(7, 3, 1)).flatten().tolist()
    assert got[:4] == pytest.approx([2.0, 3.0, 13 / 3, 4.5])  # {0,1,3,4} {1,2,4,5} {3,4,6} {4,5}
    assert got[4:] == [0.0] * 3


def test_level_loss_distance_and_precision():
    pred = torch.randn(2, 3, 6, 8, generator=gen())
    tgt = pred + 0.1 * torch.randn(2, 3, 6, 8, generator=gen(1))  # |diff| < 1: smoothl1 = mse/2
    mse = level_loss(pred, tgt, None, "mse")
    sl1 = level_loss(pred, tgt, None, "smoothl1")
    assert mse.item() == pytest.approx(2 * sl1.item(), rel=1e-5)
    assert level_loss(pred, tgt, pool(6, 3, 1), "mse").item() < mse.item()  # pooling averages
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = level_loss(pred.bfloat16(), tgt.bfloat16(), pool(6, 3, 1), "smoothl1")
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown JEPA distance"):
        level_loss(pred, tgt, None, "l1")


@pytest.mark.parametrize(("h", "w", "level"), [(3, 5, 1), (4, 4, 1), (7, 2, 2), (5, 3, 3)])
def test_pooled_level_loss_matches_adaptive_average_pooling(h, w, level):
    pred = torch.randn(2, 3, h * w, 4, generator=gen())
    tgt = torch.randn(2, 3, h * w, 4, generator=gen(1))
    out_hw = (math.ceil(h / 2**level), math.ceil(w / 2**level))

    def adaptive(x: torch.Tensor) -> torch.Tensor:
        grid = x.reshape(6, h, w, 4).permute(0, 3, 1, 2)
        return torch.nn.functional.adaptive_avg_pool2d(grid, out_hw)

    want = torch.nn.functional.mse_loss(adaptive(pred), adaptive(tgt))
    got = level_loss(pred, tgt, pool(h * w, w, level), "mse")
    torch.testing.assert_close(got, want)
    cells = pool_level(pred, pool(h * w, w, level))[:, :, : out_hw[0] * out_hw[1]]
    torch.testing.assert_close(cells.reshape(6, *out_hw, 4), adaptive(pred).permute(0, 2, 3, 1))
