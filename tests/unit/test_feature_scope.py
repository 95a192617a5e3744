"""``feature_scope``: an error inside an optional feature names the feature, and the scope is a
plain context (not a generator) that ``torch.compile`` traces through inside the compiled
forward — every feature on, one graph, no break."""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_model_switches import BASE, cfg_of, make_batch, merge
from trainer.config import Config
from trainer.model.hjepa import build_model
from trainer.train.faults import FeatureError, feature_scope

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_error_inside_is_attributed_to_the_feature():
    with (
        pytest.raises(FeatureError, match=r"\[fpn\] ValueError: bad shape") as err,
        feature_scope("fpn"),
    ):
        raise ValueError("bad shape")
    assert err.value.feature == "fpn" and isinstance(err.value.__cause__, ValueError)


@pytest.mark.parametrize(
    "exc",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),  # not the feature
        FeatureError("vicreg", "inner"),  # an inner scope already named it
        KeyboardInterrupt(),  # not an Exception
    ],
    ids=["oom", "inner-feature", "interrupt"],
)
def test_what_is_not_the_features_fault_passes_through(exc):
    with pytest.raises(type(exc)) as err, feature_scope("fpn"):
        raise exc
    assert err.value is exc


def test_nothing_raised_nothing_changed():
    with feature_scope("fpn"):
        x = 1
    assert x == 1


@pytest.mark.slow
def test_compiled_forward_with_every_feature_on_is_one_graph():
    cfg = Config.model_validate(
        merge(
            BASE,
            {
                "model": {"use_fpn": True, "use_layerscale": True, "use_flash_attention": True},
                "loss": {"use_contrastive": True, "use_vicreg": True},
            },
        )
    )
    model = build_model(cfg)
    batch = make_batch(cfg_of(), two_views=True)
    try:
        explained = torch._dynamo.explain(model.forward)(batch)
    finally:
        torch._dynamo.reset()  # no compiled state left for the next test in this process
    assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
    assert explained.graph_count == 1
