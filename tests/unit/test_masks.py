"""Multi-block masks: shapes, disjointness, block geometry, determinism and resume."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from trainer.config import MaskingConfig
from trainer.data.masks import Batch, MaskCollator


def items(n: int, size: int = 32, two_views: bool = False) -> list:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        img = torch.randn(3, size, size, generator=g)
        out.append(((img, img.flip(-1)), i) if two_views else (img, i))
    return out


def check_geometry(batch: Batch, grid: int, min_keep: int) -> None:
    b, m, nt = batch.tgt_idx.shape
    h, w = batch.block_hw
    assert (h - 1) * w < nt <= h * w and m >= 1, "the first nt patches of an h x w box"
    assert batch.ctx_idx.dtype == torch.long and batch.tgt_idx.dtype == torch.long
    assert batch.ctx_idx.shape[0] == b and batch.ctx_idx.shape[1] >= min_keep
    assert batch.tgt_pool.shape == (3, nt, nt)
    for i in range(b):
        ctx = batch.ctx_idx[i]
        assert torch.equal(ctx, torch.unique(ctx)), "context indices must be sorted and unique"
        tgt = set(batch.tgt_idx[i].flatten().tolist())
        assert not tgt & set(ctx.tolist()), "context must exclude every target patch"
        for block in batch.tgt_idx[i]:
            rows, cols = block // grid, block % grid
            # raster order inside an h x w box: token j sits at (j // w, j % w) from the corner
            j = torch.arange(nt)
            assert torch.equal(rows - rows[0], j // w) and torch.equal(cols - cols[0], j % w)


def test_shapes_disjointness_and_blocks_on_default_masking():
    collator = MaskCollator(MaskingConfig(), image_size=224, patch_size=16, seed=1)
    batch = collator(items(6, size=224))
    assert len(batch) == 6 and batch.images.shape == (6, 3, 224, 224)
    assert batch.labels.tolist() == list(range(6)) and batch.images2 is None
    assert batch.tgt_idx.shape[1] == 4
    check_geometry(batch, grid=14, min_keep=4)


def test_token_counts_are_fixed_for_the_run_and_the_aspect_varies():
    cfg = MaskingConfig(mask_scale=(0.15, 0.2), aspect_ratio=(0.75, 1.5))
    collator = MaskCollator(cfg, image_size=256, patch_size=8, seed=3)  # 32x32 grid
    nt = round(0.175 * 32 * 32)
    assert collator.target_tokens == nt
    shapes = set()
    for pos in range(60):
        ctx, tgt, (h, w) = collator.sample(3, pos)
        assert ctx.shape == (3, collator.context_tokens) and tgt.shape == (3, 4, nt)
        shapes.add((h, w))
        assert 0.75 / 1.3 <= h / w <= 1.5 * 1.3
    assert len(shapes) > 3, "block shape must be drawn per batch"


def test_auto_context_count_matches_the_reference_cap_on_vit_s16():
    # I-JEPA's own collator keeps the batch minimum: 63 context patches on average at batch 8
    # (ViT-S/16, 224 px, these scales). The static count sits at that level.
    collator = MaskCollator(MaskingConfig(), image_size=224, patch_size=16)
    assert collator.target_tokens == 34
    assert 58 <= collator.context_tokens <= 70


def test_configured_counts_win_and_bad_counts_name_the_key():
    cfg = MaskingConfig(context_tokens=50, target_tokens=20)
    collator = MaskCollator(cfg, 224, 16, seed=0)
    batch = collator(items(4, size=224))
    assert batch.ctx_idx.shape == (4, 50) and batch.tgt_idx.shape == (4, 4, 20)
    check_geometry(batch, grid=14, min_keep=4)
    with pytest.raises(ValueError, match=r"masking\.target_tokens"):
        MaskCollator(MaskingConfig(target_tokens=170), 224, 16)
    with pytest.raises(ValueError, match=r"masking\.context_tokens"):
        MaskCollator(MaskingConfig(context_tokens=197), 224, 16)
    with pytest.raises(ValueError, match=r"masking\.context_tokens"):
        MaskCollator(MaskingConfig(context_tokens=190), 224, 16)(items(2, size=224))


def test_context_is_one_block_of_the_configured_scale():
    cfg = MaskingConfig(context_scale=(0.3, 0.3), num_masks=2, mask_scale=(0.02, 0.02))
    collator = MaskCollator(cfg, image_size=256, patch_size=8, seed=0)  # 32x32 grid
    side = round((0.3 * 1024) ** 0.5)  # 18
    for pos in range(10):
        ctx, _, _ = collator.sample(4, pos)
        for row in ctx:
            r, c = row // 32, row % 32
            assert r.max() - r.min() < side and c.max() - c.min() < side


def test_context_counts_fixed_on_a_tiny_grid():
    collator = MaskCollator(MaskingConfig(), image_size=32, patch_size=8, seed=0)  # 4x4 grid
    for _ in range(30):
        batch = collator(items(8))
        check_geometry(batch, grid=4, min_keep=4)
        assert batch.ctx_idx.shape[1] == collator.context_tokens


def test_two_views_fill_images2():
    batch = MaskCollator(MaskingConfig(), 32, 8)(items(4, two_views=True))
    assert batch.images2 is not None and batch.images2.shape == batch.images.shape
    assert torch.equal(batch.images2, batch.images.flip(-1))
    moved = batch.to("cpu")
    assert torch.equal(moved.tgt_idx, batch.tgt_idx) and moved.block_hw == batch.block_hw
    assert torch.equal(moved.tgt_pool, batch.tgt_pool)


def test_same_seed_same_masks_and_state_dict_resume():
    a = MaskCollator(MaskingConfig(), 224, 16, seed=7)
    b = MaskCollator(MaskingConfig(), 224, 16, seed=7)
    other = MaskCollator(MaskingConfig(), 224, 16, seed=8)
    data = items(4, size=224)
    first = [a(data) for _ in range(3)]
    second = [b(data) for _ in range(3)]
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x.ctx_idx, y.ctx_idx) and torch.equal(x.tgt_idx, y.tgt_idx)
    assert any(not torch.equal(x.tgt_idx, other(data).tgt_idx) for x in first), (
        "a different seed must give different masks"
    )

    state = a.state_dict()
    expected = a(data)
    resumed = MaskCollator(MaskingConfig(), 224, 16, seed=0)
    resumed.load_state_dict(state)
    got = resumed(data)
    assert torch.equal(got.ctx_idx, expected.ctx_idx)
    assert torch.equal(got.tgt_idx, expected.tgt_idx)


def test_dataloader_workers_get_the_in_process_masks():
    data = items(16)
    plain = MaskCollator(MaskingConfig(), 32, 8, seed=5)
    want = [b.tgt_idx for b in DataLoader(data, batch_size=4, collate_fn=plain)]
    workers = MaskCollator(MaskingConfig(), 32, 8, seed=5)
    workers.seek(0)
    loader = DataLoader(
        data, batch_size=4, collate_fn=workers, num_workers=2, multiprocessing_context="fork"
    )
    got = [b.tgt_idx for b in loader]
    assert len(got) == len(want)
    for x, y in zip(got, want, strict=True):
        assert torch.equal(x, y)


def test_impossible_masking_is_a_clear_error():
    cfg = MaskingConfig(num_masks=1, mask_scale=(0.25, 0.25), min_keep=4)
    collator = MaskCollator(cfg, image_size=16, patch_size=8)  # 2x2 grid: a target leaves <= 3
    with pytest.raises(ValueError, match="min_keep"):
        collator(items(2, size=16))


def test_collate_takes_its_position_from_the_caller():
    collator = MaskCollator(MaskingConfig(), 224, 16, seed=2)
    data = items(4, size=224)
    big = (1 << 62) + 12345  # a 63-bit per-batch seed
    a = collator.collate(data, position=big)
    b = MaskCollator(MaskingConfig(), 224, 16, seed=2).collate(data, position=big)
    assert torch.equal(a.tgt_idx, b.tgt_idx) and torch.equal(a.ctx_idx, b.ctx_idx)
    assert collator.state_dict()["position"] == 0, "collate() leaves the counter alone"
    check_geometry(a, grid=14, min_keep=4)
