"""Every trainable parameter of every shipped recipe gets a gradient from one training loss (a
parameter without one never learns, and DDP refuses it at the second step), and the
``faults.check_gradients`` hook names any that does not."""

from __future__ import annotations

import pytest
import torch

from tests.matrixutil import RECIPES, SHRINK
from trainer.config import load_config
from trainer.data.masks import MaskCollator
from trainer.model.hjepa import build_model
from trainer.train.faults import GradientlessParameterError, require_gradients

pytestmark = pytest.mark.usefixtures("one_thread")


def recipe_model(name: str):
    recipe = RECIPES[name]
    cfg = load_config(recipe.config, [*SHRINK, *recipe.sets])
    g = torch.Generator().manual_seed(0)
    size = cfg.data.image_size
    imgs = [torch.randn(3, size, size, generator=g) for _ in range(4)]
    two = cfg.loss.use_contrastive
    data = [((x, x.flip(-1)), 0) if two else (x, 0) for x in imgs]
    batch = MaskCollator(cfg.masking, size, cfg.model.patch_size, seed=0)(data)
    return build_model(cfg), batch


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_trainable_parameter_gets_a_gradient(name: str) -> None:
    model, batch = recipe_model(name)
    model.train()
    model(batch).total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    # frozen on purpose: the EMA target, and FPN output norms the context path never reads
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen <= {"target_encoder", "encoder"}, frozen
    assert all(
        n.startswith("target_encoder.") or ".fpn.out_norm." in n
        for n, p in model.named_parameters()
        if not p.requires_grad
    )


def test_the_gradient_check_names_a_parameter_without_one() -> None:
    model, batch = recipe_model("DC")
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-3)
    require_gradients(model, opt)
    model(batch).total.backward()
    opt.step()  # every parameter has its gradient: passes
    opt.zero_grad(set_to_none=True)
    model(batch).total.backward()
    model.predictor.mask_token.grad = None  # as if the loss never read it
    with pytest.raises(GradientlessParameterError, match=r"predictor\.mask_token"):
        opt.step()
