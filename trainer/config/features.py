"""The optional features, named once: each name → the config switch that turns it on.

The worker wraps each feature's code in ``trainer.train.faults.feature_scope(name)`` (a failure
inside it is a ``fatal`` event naming the feature), the orchestrator's runbooks name them in
their ``features`` ladder, the preflight probes them and the report shows them — all by these
names. ``FeatureName`` spells the same names for schemas (``tests/unit/test_runbook.py`` keeps
the two equal); a name that is not here is a schema error, never a scope that silently never
matches.
"""

from __future__ import annotations

from typing import Literal

FEATURE_KEYS: dict[str, str] = {
    "contrastive": "loss.use_contrastive",
    "fpn": "model.use_fpn",
    "gradient_checkpointing": "model.use_gradient_checkpointing",
    "flash_attention": "model.use_flash_attention",
    "layerscale": "model.use_layerscale",
    "vicreg": "loss.use_vicreg",
}
FeatureName = Literal[
    "contrastive", "fpn", "gradient_checkpointing", "flash_attention", "layerscale", "vicreg"
]
