"""Fault attribution and injection.

``feature_scope(name)`` wraps the code of an optional feature (``fpn``, ``contrastive``,
``gradient_checkpointing``, ``flash_attention``, ``layerscale``, ``vicreg``): any exception
raised inside it is re-raised as :class:`FeatureError` naming the feature, so the worker exits
with ``fatal kind=feature`` and the supervisor knows which feature to switch off. When
``faults.raise_in_feature`` names the feature and the fault is armed, the scope raises on entry
(a test aid). The loop arms it at start-up, or — with ``raise_in_feature_after_step: N`` — from
optimizer step N on, so checkpoints exist before the feature fails. It fires as long as the
feature is on (not one-shot: the fallback is to switch the feature off).

Other faults are applied by the training loop: ``nonfinite_at_step`` (the loss → NaN),
``oom_at_step`` (an OutOfMemoryError), ``grad_overflow_at_step`` + ``grad_overflow_steps``
(K consecutive steps with non-finite gradients and a finite loss: skipped steps),
``hang_at_step`` — each one-shot, remembered in ``faults.fired.json`` so a restart from an
earlier checkpoint passes it — and ``oom_above_micro_batch`` and ``step_delay_s`` (always).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_INJECT: dict[str, str | None] = {"feature": None}


class FeatureError(RuntimeError):
    """An exception attributed to an optional feature."""

    def __init__(self, feature: str, message: str) -> None:
        super().__init__(f"[{feature}] {message}")
        self.feature = feature


def set_injected_feature(name: str | None) -> None:
    """Arm ``faults.raise_in_feature`` for this process (None disarms)."""
    _INJECT["feature"] = name


@contextlib.contextmanager
def feature_scope(name: str) -> Iterator[None]:
    if _INJECT["feature"] == name:
        raise FeatureError(name, f"injected fault in feature {name!r} (faults.raise_in_feature)")
    try:
        yield
    except FeatureError:
        raise
    except Exception as exc:
        from trainer.device import is_oom

        if is_oom(exc):  # memory exhaustion is not the feature's fault
            raise
        raise FeatureError(name, f"{type(exc).__name__}: {exc}") from exc
