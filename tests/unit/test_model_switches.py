"""Every model/loss switch really changes the computation (upstream had keys that did nothing).

Tiny config: image 32, patch 8 (4x4 grid), width 48, depth 2, 3 heads, predictor depth 1,
batch 4. Each test builds models from the same seed, so switches that add no parameters start
from identical weights and differences come from the switch alone.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from trainer.config import Config
from trainer.data.masks import Batch, MaskCollator
from trainer.model import vit
from trainer.model.hjepa import HJEPA, LossOutput, build_model
from trainer.train import faults

BASE: dict[str, Any] = {
    "experiment": {"seed": 3},
    "data": {"dataset": "synthetic", "image_size": 32, "batch_size": 4},
    "model": {
        "encoder_type": "custom",
        "embed_dim": 48,
        "depth": 2,
        "num_heads": 3,
        "patch_size": 8,
        "num_hierarchies": 3,
        "predictor": {"depth": 1, "num_heads": 3},
    },
    "loss": {"hierarchy_weights": [1.0, 0.7, 0.5]},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def cfg_of(**sections: dict) -> Config:
    return Config.model_validate(merge(BASE, sections))


def make_batch(cfg: Config, two_views: bool = False, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    size = cfg.data.image_size
    imgs = [torch.randn(3, size, size, generator=g) for _ in range(4)]
    if two_views:
        data = [((x, x.flip(-1) + 0.1 * torch.randn(x.shape, generator=g)), 0) for x in imgs]
    else:
        data = [(x, 0) for x in imgs]
    collator = MaskCollator(cfg.masking, size, cfg.model.patch_size, seed=seed)
    return collator(data)


def run(model: HJEPA, batch: Batch) -> tuple[LossOutput, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(batch)
    out.total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def trainable(model: HJEPA) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def grad_norm(grads: dict[str, torch.Tensor], prefix: str) -> float:
    return sum(g.norm().item() for n, g in grads.items() if n.startswith(prefix))


def test_flash_attention_uses_sdpa_and_matches_explicit_attention(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    on = build_model(cfg_of(model={"use_flash_attention": True}))
    off = build_model(cfg_of(model={"use_flash_attention": False}))
    batch = make_batch(on_cfg := cfg_of())
    assert on_cfg.model.use_flash_attention
    out_on, g_on = run(on, batch)
    n_on = len(calls)
    out_off, g_off = run(off, batch)
    assert n_on == 2 + 2 + 1  # target encoder, context encoder, predictor blocks
    assert len(calls) == n_on, "explicit attention must not call SDPA"
    assert out_on.total.item() == pytest.approx(out_off.total.item(), rel=1e-5)
    for name, g in g_on.items():
        torch.testing.assert_close(g, g_off[name], rtol=1e-4, atol=1e-6)
    assert on.feature_status()["flash_attention"] == "on"
    assert off.feature_status()["flash_attention"] == "off"


def test_layerscale_adds_trained_gammas_on_both_branches():
    off = build_model(cfg_of())
    small = build_model(cfg_of(model={"use_layerscale": True, "layerscale_init": 1e-5}))
    unit = build_model(cfg_of(model={"use_layerscale": True, "layerscale_init": 1.0}))
    assert trainable(small) - trainable(off) == 2 * 2 * 48  # 2 branches x depth x width
    gammas = [p for n, p in small.encoder.named_parameters() if n.endswith("gamma")]
    assert len(gammas) == 4 and all(torch.all(g == 1e-5) for g in gammas)
    batch = make_batch(cfg_of())
    base, _ = run(off, batch)
    out_unit, _ = run(unit, batch)
    out_small, grads = run(small, batch)
    # gamma = 1 is the identity: the switch changes the result only through the gammas
    assert out_unit.total.item() == pytest.approx(base.total.item(), rel=1e-5)
    assert out_small.total.item() != pytest.approx(base.total.item(), rel=1e-5)
    # with gammas of 1e-5 the blocks barely touch the residual stream
    diff = (small.encode(batch.images) - off.encode(batch.images)).abs().max().item()
    assert diff > 1e-2
    assert all(grads[n].abs().sum() > 0 for n in grads if n.endswith("gamma"))


def test_gradient_checkpointing_is_used_and_changes_nothing_numerically(monkeypatch):
    calls: list[dict] = []
    real = vit.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(kwargs)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(vit, "checkpoint", counting)
    plain = build_model(cfg_of())
    ckpt = build_model(cfg_of(model={"use_gradient_checkpointing": True}))
    batch = make_batch(cfg_of())
    out_plain, g_plain = run(plain, batch)
    assert not calls
    out_ckpt, g_ckpt = run(ckpt, batch)
    assert len(calls) == 2 + 1  # context encoder + predictor blocks; the target runs no-grad
    assert all(kw.get("use_reentrant") is False for kw in calls)
    assert out_ckpt.total.item() == pytest.approx(out_plain.total.item(), rel=1e-6)
    assert g_ckpt.keys() == g_plain.keys()
    for name, g in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], g, rtol=1e-5, atol=1e-7)
    calls.clear()
    ckpt.eval()
    ckpt(batch)
    assert not calls, "no checkpointing outside training"


HIER_MASKS = {"mask_scale": (0.25, 0.25), "aspect_ratio": (1.0, 1.0), "num_masks": 2}


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_hierarchy_levels_are_weighted_spatially_pooled_losses(levels):
    weights = [1.0, 0.7, 0.5, 0.3][:levels]
    cfg = cfg_of(
        data={"image_size": 64},  # 8x8 grid, 4x4 target blocks
        model={"num_hierarchies": levels},
        masking=HIER_MASKS,
        loss={"hierarchy_weights": weights, "use_vicreg": False},
    )
    model = build_model(cfg)
    batch = make_batch(cfg)
    assert batch.block_hw == (4, 4)
    out, _ = run(model, batch)
    assert len(out.levels) == levels
    expected = sum(w * lv.item() for w, lv in zip(weights, out.levels, strict=True))
    assert out.total.item() == pytest.approx(expected, rel=1e-5)
    values = [lv.item() for lv in out.levels]
    assert len(set(values[:3])) == len(values[:3]), "levels 0-2 pool 4x4 blocks differently"


def test_hierarchy_weights_change_the_total():
    batch = make_batch(cfg_of())
    a = run(build_model(cfg_of()), batch)[0].total.item()
    heavier = cfg_of(loss={"hierarchy_weights": [1.0, 2.0, 3.0]})
    b = run(build_model(heavier), batch)[0].total.item()
    assert b > a


@pytest.mark.parametrize("fusion", ["add", "concat"])
def test_fpn_fuses_stages_and_drives_the_targets(fusion):
    plain = build_model(cfg_of())
    fpn_cfg = cfg_of(model={"use_fpn": True, "fpn": {"feature_dim": 32, "fusion_method": fusion}})
    model = build_model(fpn_cfg)
    assert plain.encoder.fpn is None and model.encoder.fpn is not None
    assert model.encoder.vit.stage_blocks == (1, 1, 2)
    assert model.predictor.heads[0].out_features == 32 and len(model.predictor.heads) == 3
    fpn_params = sum(p.numel() for p in model.encoder.fpn.parameters())
    assert fpn_params > 0 and trainable(model) != trainable(plain)
    batch = make_batch(fpn_cfg)
    out, grads = run(model, batch)
    assert out.total.item() != pytest.approx(run(plain, batch)[0].total.item(), rel=1e-3)
    assert grad_norm(grads, "encoder.fpn.") > 0, "the context FPN must be trained"
    # the loss really depends on the target FPN's weights
    with torch.no_grad():
        model.target_encoder.fpn.lateral[0][1].weight.mul_(3.0)
    assert run(model, batch)[0].total.item() != pytest.approx(out.total.item(), rel=1e-4)
    assert model.feature_status()["fpn"] == f"on ({fusion}, dim 32)"


def test_fpn_concat_has_merge_layers():
    add = build_model(cfg_of(model={"use_fpn": True, "fpn": {"fusion_method": "add"}}))
    cat = build_model(cfg_of(model={"use_fpn": True, "fpn": {"fusion_method": "concat"}}))
    assert trainable(cat) - trainable(add) == 3 * (2 * 48 * 48 + 48)


def test_vicreg_trains_the_encoder_not_the_predictor():
    no_jepa = {"jepa_weight": 0.0, "use_vicreg": True, "vicreg_weight": 1.0}
    cfg = cfg_of(loss=no_jepa)
    out, grads = run(build_model(cfg), make_batch(cfg))
    assert "vicreg" in out.parts
    assert out.total.item() == pytest.approx(out.parts["vicreg"].item(), rel=1e-6)
    assert grad_norm(grads, "encoder.") > 0
    assert grad_norm(grads, "predictor.") == 0, "VICReg must act on encoder features"
    off = cfg_of(loss={**no_jepa, "use_vicreg": False})
    out_off, grads_off = run(build_model(off), make_batch(off))
    assert "vicreg" not in out_off.parts and grad_norm(grads_off, "encoder.") == 0


def test_vicreg_adds_invariance_with_a_second_view():
    cfg = cfg_of(loss={"use_vicreg": True})
    model = build_model(cfg)
    one = model(make_batch(cfg)).parts["vicreg"].item()
    two = model(make_batch(cfg, two_views=True)).parts["vicreg"].item()
    assert two > one


def test_contrastive_needs_two_views():
    cfg = cfg_of(loss={"use_contrastive": True})
    with pytest.raises(ValueError, match="images2"):
        build_model(cfg)(make_batch(cfg))


@pytest.mark.parametrize("on_context", [False, True])
def test_contrastive_term_trains_the_encoder(on_context):
    loss = {
        "use_contrastive": True,
        "jepa_weight": 0.0,
        "use_vicreg": False,
        "contrastive_weight": 1.0,
        "contrastive_on_context": on_context,
    }
    cfg = cfg_of(loss=loss)
    model = build_model(cfg)
    out, grads = run(model, make_batch(cfg, two_views=True))
    assert out.total.item() == pytest.approx(out.parts["contrastive"].item(), rel=1e-6)
    assert grad_norm(grads, "encoder.") > 0 and grad_norm(grads, "predictor.") == 0
    other = cfg_of(loss={**loss, "contrastive_on_context": not on_context})
    other_out = build_model(other)(make_batch(other, two_views=True))
    assert other_out.parts["contrastive"].item() != pytest.approx(out.parts["contrastive"].item())
    dot = cfg_of(loss={**loss, "use_cosine_similarity": False})
    dot_out = build_model(dot)(make_batch(dot, two_views=True))
    assert dot_out.parts["contrastive"].item() != pytest.approx(out.parts["contrastive"].item())


def test_contrastive_off_ignores_the_second_view():
    cfg = cfg_of(loss={"use_vicreg": False})
    out = build_model(cfg)(make_batch(cfg, two_views=True))
    assert set(out.parts) == {"jepa"}


def test_jepa_distance_normalisation_and_weight():
    batch = make_batch(cfg_of())
    no_reg = {"use_vicreg": False}
    sl1 = build_model(cfg_of(loss=no_reg))(batch)
    mse = build_model(cfg_of(loss={**no_reg, "type": "mse"}))(batch)
    cjepa_mse = cfg_of(
        loss={**no_reg, "type": "combined", "jepa_loss_type": "mse"},
    )
    assert build_model(cjepa_mse)(batch).total.item() == pytest.approx(mse.total.item())
    assert mse.levels[0].item() != pytest.approx(sl1.levels[0].item(), rel=1e-3)
    # the target encoder ends in a LayerNorm, so normalising only matters once its affine
    # parameters have moved away from (1, 0), as they do in training
    plain, normed = (
        build_model(cfg_of(loss={**no_reg, "normalize_embeddings": flag})) for flag in (0, 1)
    )
    for model in (plain, normed):
        with torch.no_grad():
            model.target_encoder.vit.norm.weight.mul_(3.0)
            model.target_encoder.vit.norm.bias.add_(0.5)
    assert normed(batch).levels[0].item() < 0.5 * plain(batch).levels[0].item()
    double = build_model(cfg_of(loss={**no_reg, "jepa_weight": 2.0}))(batch)
    assert double.total.item() == pytest.approx(2 * sl1.total.item(), rel=1e-6)


def with_predictor(**knobs: Any) -> HJEPA:
    return build_model(cfg_of(model={"predictor": {"depth": 1, "num_heads": 3, **knobs}}))


def test_predictor_knobs_change_the_predictor():
    base = with_predictor()
    block = sum(p.numel() for p in base.predictor.blocks[0].parameters())
    assert trainable(with_predictor(depth=2)) - trainable(base) == block
    assert with_predictor(embed_dim=24).predictor.embed.out_features == 24
    assert with_predictor(qkv_bias=False).predictor.blocks[0].attn.qkv.bias is None
    assert base.predictor.blocks[0].attn.qkv.bias is not None
    assert trainable(with_predictor(mlp_ratio=2.0)) < trainable(base)
    batch = make_batch(cfg_of())
    one_head = with_predictor(num_heads=1)
    assert trainable(one_head) == trainable(base)
    for model in (one_head, base):  # sharpen attention (uniform at init whatever the heads)
        with torch.no_grad():
            model.predictor.blocks[0].attn.qkv.weight.mul_(30.0)
    assert one_head(batch).total.item() != pytest.approx(base(batch).total.item(), rel=1e-4)
    drop = with_predictor(dropout=0.5)
    assert drop(batch).total.item() != drop(batch).total.item()
    drop.eval()
    assert drop(batch).total.item() == drop(batch).total.item()


def test_predictor_width_must_split_into_heads():
    with pytest.raises(ValueError, match="predictor"):
        build_model(cfg_of(model={"predictor": {"depth": 1, "num_heads": 5}}))


FEATURE_SWITCHES = {
    "flash_attention": ({"model": {"use_flash_attention": True}}, False),
    "layerscale": ({"model": {"use_layerscale": True}}, False),
    "gradient_checkpointing": ({"model": {"use_gradient_checkpointing": True}}, False),
    "fpn": ({"model": {"use_fpn": True}}, False),
    "contrastive": ({"loss": {"use_contrastive": True}}, True),
    "vicreg": ({"loss": {"use_vicreg": True}}, False),
}
FEATURES_OFF = {
    "model": {"use_flash_attention": False},
    "loss": {"use_vicreg": False},
}


@pytest.mark.parametrize("feature", sorted(FEATURE_SWITCHES))
def test_injected_fault_raises_inside_the_enabled_feature_only(feature):
    sections, two_views = FEATURE_SWITCHES[feature]
    on = Config.model_validate(merge(merge(BASE, FEATURES_OFF), sections))
    off = Config.model_validate(merge(BASE, FEATURES_OFF))
    faults.set_injected_feature(feature)
    try:
        with pytest.raises(faults.FeatureError) as err:
            run(build_model(on), make_batch(on, two_views))
        assert err.value.feature == feature
        run(build_model(off), make_batch(off, two_views))  # disabled: never entered
    finally:
        faults.set_injected_feature(None)


def test_ema_moves_target_toward_encoder_by_the_momentum():
    model = build_model(cfg_of())
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.5)
    before = [p.clone() for p in model.target_encoder.parameters()]
    model.update_target(0.9)
    for t0, t, e in zip(
        before, model.target_encoder.parameters(), model.encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * e)
    frozen = [p.clone() for p in model.target_encoder.parameters()]
    model.update_target(1.0)
    after = model.target_encoder.parameters()
    assert all(torch.equal(a, b) for a, b in zip(frozen, after, strict=True))


def test_encode_returns_pooled_unnormalised_target_features():
    cfg = cfg_of()
    model = build_model(cfg)
    images = make_batch(cfg).images
    feats = model.encode(images)
    assert feats.shape == (4, 48) and feats.dtype == torch.float32 and not feats.requires_grad
    tokens, _ = model.target_encoder.vit(images)
    torch.testing.assert_close(feats, tokens.mean(dim=1))
    assert not torch.allclose(feats.norm(dim=1), torch.ones(4), atol=0.05)


def test_param_groups_skip_decay_on_norms_biases_and_gammas():
    model = build_model(cfg_of(model={"use_layerscale": True, "use_fpn": True}))
    decay, no_decay = model.param_groups(0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(p is model.predictor.mask_token for p in no_decay["params"])
    grouped = {id(p) for p in decay["params"]} | {id(p) for p in no_decay["params"]}
    assert len(grouped) == len(decay["params"]) + len(no_decay["params"])
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    assert not grouped & {id(p) for p in model.target_encoder.parameters()}


def test_runs_under_bf16_autocast_with_float32_losses():
    cfg = cfg_of(model={"use_fpn": True}, loss={"use_contrastive": True})
    model = build_model(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_batch(cfg, two_views=True))
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    assert all(lv.dtype == torch.float32 for lv in out.levels)
    out.total.backward()


def test_feature_status_reports_every_switch():
    status = build_model(
        cfg_of(model={"use_gradient_checkpointing": True}, loss={"use_vicreg": False})
    ).feature_status()
    assert status["gradient_checkpointing"] == "on" and status["vicreg"] == "off"
    assert status["layerscale"] == "off" and status["fpn"] == "off"
    assert status["contrastive"] == "off" and status["hierarchy"].startswith("3 levels")


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("depth", [1, 3])
def test_predictor_last_block_computes_only_the_mask_tokens_exactly(sdpa, depth):
    """The last predictor block skips the context rows nobody reads: predictions and every
    gradient equal those of running every row through every block and keeping the targets."""
    cfg = cfg_of(model={"use_flash_attention": sdpa, "predictor": {"depth": depth, "num_heads": 3}})
    pred = build_model(cfg).predictor
    g = torch.Generator().manual_seed(1)
    b, nc = 3, 7
    ctx = torch.randn(b, nc, 48, generator=g)
    ctx_idx = torch.stack([torch.randperm(16, generator=g)[:nc] for _ in range(b)])
    tgt_idx = torch.randint(0, 16, (b, 2, 5), generator=g)
    with torch.no_grad():  # sharpen attention so a wrong key set would show
        for blk in pred.blocks:
            blk.attn.qkv.weight.mul_(20.0)

    def full_rows() -> torch.Tensor:
        pos = pred.pos_embed.expand(b, -1, -1)
        x = (pred.embed(ctx) + vit.gather_tokens(pos, ctx_idx)).repeat_interleave(2, dim=0)
        tgt_pos = vit.gather_tokens(pos, tgt_idx.reshape(b, 10)).reshape(b * 2, 5, -1)
        x = torch.cat([x, pred.mask_token + tgt_pos], dim=1)
        for blk in pred.blocks:
            x = blk(x)  # every row, every block
        return pred.heads[0](pred.norm(x[:, nc:])).reshape(b, 2, 5, -1)

    def grads(fn: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred.zero_grad(set_to_none=True)
        out = fn()
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in pred.named_parameters()}

    got, got_g = grads(lambda: pred(ctx, ctx_idx, tgt_idx)[0])
    want, want_g = grads(full_rows)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got_g.keys() == want_g.keys()
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], rtol=1e-4, atol=1e-5, msg=name)
