"""Label-free health of a training run, measured cheaply while it trains: the ``health`` event.

    monitor = HealthMonitor(every=25, emit=ev.emit)
    monitor.after_step(epoch, step, loss, model)   # every applied optimizer step

Every ``logging.health_every_steps`` optimizer steps it reads the pooled target-encoder
embeddings [B, D] of the batch the model saw last (``HJEPA.last_target_embedding``, kept by
the forward pass: no extra forward) and reports their RankMe effective rank and mean
per-dimension variance (``trainer.eval.metrics``'s functions), with an exponential moving average
of the training loss (the loss trend, updated from numbers the loop already has on the host).
Reading the embedding copies it to the host, a device sync, but only on those steps. The rank
of one batch is at most min(B, D), so it is judged against its own history (and a floor in
batch terms), not against the evaluation's "> 100 of 384". The orchestrator judges the points
(``orchestrator/policy/health.py``): collapse and divergence are faults with a ladder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trainer.eval.metrics import effective_rank, feature_variance
from trainer.events import Health

LOSS_EMA = 0.9  # weight of the past in the loss trend (about 10 steps)


class HealthMonitor:
    """Emits a ``health`` event every ``every`` optimizer steps (0: never)."""

    def __init__(self, every: int, emit: Callable[[Any], None]) -> None:
        self.every = every
        self.emit = emit
        self.loss_ema: float | None = None

    def after_step(self, epoch: int, step: int, loss: float, model: Any) -> None:
        if self.every <= 0:
            return
        prev = self.loss_ema
        self.loss_ema = loss if prev is None else LOSS_EMA * prev + (1 - LOSS_EMA) * loss
        if step % self.every:
            return
        z = getattr(model, "last_target_embedding", None)
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[0] < 2:
            return
        z = z.detach().float().cpu()
        self.emit(
            Health(
                epoch=epoch,
                step=step,
                rank=round(effective_rank(z), 4),
                variance=round(feature_variance(z), 6),
                loss_ema=round(self.loss_ema, 6),
                batch=int(z.shape[0]),
                dim=int(z.shape[1]),
            )
        )
