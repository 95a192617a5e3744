"""One optimizer step of H-JEPA: the hot path.

    step = TrainStep(model, cfg, device, precision)
    result = step(micro_batches, lr=..., momentum=...)

For each micro-batch: forward under autocast, ``loss / n_micro`` backward (the loss is averaged
over the accumulation, not summed; scaled by the GradScaler under fp16). Then ONE host sync
reads the loss and the gradient norm together, before the optimizer step, and decides:

- loss non-finite → ``finite=False``: nothing is applied (the caller stops: ``nonfinite``);
- loss finite, gradients not (a GradScaler overflow, or a non-finite norm without a scaler)
  → ``overflow=True``: the step is SKIPPED on purpose — no optimizer step, no EMA update, the
  gradients are dropped, and with a scaler its scale backs off (``scaler.update()`` sees the
  overflow ``unscale_`` recorded). This is routine under fp16, not a failure;
- otherwise clip, AdamW, and one EMA update of the target encoder.

With several ranks (``dist.world > 1``) the forward runs through the DDP wrapper ``ddp``:
gradients are averaged across ranks at the last micro-batch (the others run under
``no_sync()``), and the step's one host sync becomes one all-reduce of the statistics vector,
which also carries the caller's ``extra`` numbers (summed over ranks: stop flags and control
decisions, see ``trainer.loop``). A non-finite loss on any rank is non-finite on all of them,
so every rank takes or skips the same step.

Every kernel flag (fused AdamW, foreach clipping/norms/lerp, autocast dtype, scaler) comes from
``trainer.device.kernels_for``. The LR is set on every step from the caller's schedule, so an LR
read from a checkpoint's optimizer state never survives a resume.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.config import Config
from trainer.device import Precision, kernels_for
from trainer.dist import Dist
from trainer.masks import Batch
from trainer.model import HJEPA


@dataclass
class StepResult:
    finite: bool  # the loss was finite
    loss: float
    levels: list[float]
    parts: dict[str, float]
    grad_norm: float
    grad_norms: dict[str, float] | None = None  # per top-level module (logging.log_gradients)
    overflow: bool = False  # loss finite, gradients not: the step was skipped
    extra: list[float] = field(default_factory=list)  # the caller's numbers, summed over ranks


class NonFiniteLossError(RuntimeError):
    """The loss was NaN/Inf, or too many consecutive overflow steps; nothing was applied."""


class TrainStep:
    def __init__(
        self,
        model: HJEPA,
        cfg: Config,
        device: torch.device,
        precision: Precision,
        dist: Dist | None = None,
        ddp: Any = None,
    ):
        self.model = model
        self.dist = dist or Dist()
        self.forward = ddp if ddp is not None else model  # DDP wrapper with several ranks
        self.cfg = cfg
        self.device = device
        self.precision = precision
        self.kernels = kernels_for(device, precision)
        t = cfg.training
        self.optimizer = torch.optim.AdamW(
            model.param_groups(t.weight_decay),
            lr=t.lr,
            betas=tuple(t.betas),
            **self.kernels.adamw_kwargs(),
        )
        self.scaler = self.kernels.scaler()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip = t.clip_grad if t.clip_grad is not None else float("inf")
        self.poison_next = False  # faults.nonfinite_at_step: poison this step's loss
        self.overflow_next = False  # faults.grad_overflow_at_step: poison this step's gradients

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def loss_scale(self) -> float | None:
        """The GradScaler's current scale (a host sync: call it only when logging)."""
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    def __call__(
        self,
        micro_batches: list[Batch],
        lr: float,
        momentum: float,
        grad_norms: bool = False,
        extra: list[float] | None = None,
    ) -> StepResult:
        model, n, k = self.model, len(micro_batches), self.kernels
        self.set_lr(lr)
        loss_sum = torch.zeros((), device=self.device)
        levels_sum: list[torch.Tensor] | None = None
        parts_sum: dict[str, torch.Tensor] = {}
        for i, mb in enumerate(micro_batches):
            sync = self.forward is model or i == n - 1
            with contextlib.nullcontext() if sync else self.forward.no_sync():
                with k.autocast():
                    out = self.forward(mb)
                loss = out.total.float() / n
                if self.poison_next:
                    loss = loss * float("nan")
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            loss_sum += loss.detach()
            lv = [x.detach().float() / n for x in out.levels]
            if levels_sum is None:
                levels_sum = lv
            else:
                levels_sum = [a + b for a, b in zip(levels_sum, lv, strict=True)]
            for key, v in out.parts.items():
                parts_sum[key] = parts_sum.get(key, 0) + v.detach().float() / n
        if self.overflow_next:
            self._poison_grads()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # records inf/NaN found for update()
        modules = self._module_grad_norms() if grad_norms else {}
        grad_norm = k.clip_grad_norm_(self.params, self.clip)
        # The one host sync of the step: loss, grad norm, levels and parts together.
        levels_t = levels_sum or [loss_sum]
        names = list(parts_sum)
        vec = torch.stack(
            [
                loss_sum,
                grad_norm.float().to(loss_sum.device),
                *levels_t,
                *(parts_sum[name] for name in names),
                *modules.values(),
            ]
        )
        extra_out, n_extra = list(extra or []), len(extra or [])
        if self.dist.world > 1:  # the rank mean of every statistic, the sum of the extras
            tail = torch.tensor(extra_out, dtype=vec.dtype, device=vec.device)
            vec = self.dist.sum_(torch.cat([vec / self.dist.world, tail]))
        stats = vec.cpu().tolist()
        if self.dist.world > 1:
            stats, extra_out = stats[: len(stats) - n_extra], stats[len(stats) - n_extra :]
        loss_v, gn_v = stats[0], stats[1]
        if not math.isfinite(loss_v) or not math.isfinite(gn_v):
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()  # an overflow: the scale backs off
            return StepResult(
                math.isfinite(loss_v),
                loss_v,
                [],
                {},
                gn_v,
                overflow=math.isfinite(loss_v),
                extra=extra_out,
            )
        self.optimizer.step()  # gradients are unscaled and known finite
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        model.update_target(momentum, k)
        levels = stats[2 : 2 + len(levels_t)]
        rest = stats[2 + len(levels_t) :]
        parts = dict(zip(names, rest[: len(names)], strict=True))
        per_module = dict(zip(modules, rest[len(names) :], strict=True)) if grad_norms else None
        return StepResult(True, loss_v, levels, parts, gn_v, per_module, extra=extra_out)

    def _poison_grads(self) -> None:
        """Make one gradient non-finite (the loss stays finite): a simulated fp16 overflow."""
        for p in self.params:
            if p.grad is not None:
                p.grad.mul_(float("inf"))
                return

    def _module_grad_norms(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, module in self.model.named_children():
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            if grads:
                out[name] = self.kernels.norm(grads)
        return out
