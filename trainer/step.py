"""One optimizer step of H-JEPA: the hot path.

    step = TrainStep(model, cfg, device, precision)
    result = step(micro_batches, lr=..., momentum=...)

For each micro-batch: forward under autocast, ``loss / n_micro`` backward (the loss is averaged
over the accumulation, not summed). Then ONE host sync checks that the loss and the gradient
norm are finite — before the optimizer step, so a NaN never reaches the weights — then clip,
AdamW (fused where available), and one EMA update of the target encoder per optimizer step
(foreach ops). The LR is set on every step from the caller's schedule, so an LR read from a
checkpoint's optimizer state never survives a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainer.config import Config
from trainer.device import Precision, autocast, optimizer_kwargs
from trainer.masks import Batch
from trainer.model import HJEPA


def _isfinite(x: float) -> bool:
    return math.isfinite(x)


@dataclass
class StepResult:
    finite: bool
    loss: float
    levels: list[float]
    parts: dict[str, float]
    grad_norm: float
    grad_norms: dict[str, float] | None = None  # per top-level module (logging.log_gradients)


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm was NaN/Inf; the optimizer step was not taken."""


class TrainStep:
    def __init__(self, model: HJEPA, cfg: Config, device: torch.device, precision: Precision):
        self.model = model
        self.cfg = cfg
        self.device = device
        self.precision = precision
        t = cfg.training
        self.optimizer = torch.optim.AdamW(
            model.param_groups(t.weight_decay),
            lr=t.lr,
            betas=tuple(t.betas),
            **optimizer_kwargs(device),
        )
        self.scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip = t.clip_grad if t.clip_grad is not None else float("inf")
        self.poison_next = False  # faults.nonfinite_at_step: poison this step's loss

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def __call__(
        self, micro_batches: list[Batch], lr: float, momentum: float, grad_norms: bool = False
    ) -> StepResult:
        model, n = self.model, len(micro_batches)
        self.set_lr(lr)
        loss_sum = torch.zeros((), device=self.device)
        levels_sum: list[torch.Tensor] | None = None
        parts_sum: dict[str, torch.Tensor] = {}
        for mb in micro_batches:
            with autocast(self.device, self.precision):
                out = model(mb)
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
            for k, v in out.parts.items():
                parts_sum[k] = parts_sum.get(k, 0) + v.detach().float() / n
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        modules = self._module_grad_norms() if grad_norms else {}
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        # The one host sync of the step: loss, grad norm, levels and parts together.
        levels_t = levels_sum or [loss_sum]
        names = list(parts_sum)
        stats = torch.stack(
            [loss_sum, grad_norm.float().to(loss_sum.device), *levels_t,
             *(parts_sum[k] for k in names), *modules.values()]
        ).cpu().tolist()
        loss_v, gn_v = stats[0], stats[1]
        finite = all(map(_isfinite, stats[:2]))
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()
            return StepResult(False, loss_v, [], {}, gn_v)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        model.update_target(momentum)
        levels = stats[2 : 2 + len(levels_t)]
        rest = stats[2 + len(levels_t) :]
        parts = dict(zip(names, rest[: len(names)], strict=True))
        per_module = dict(zip(modules, rest[len(names) :], strict=True)) if grad_norms else None
        return StepResult(True, loss_v, levels, parts, gn_v, per_module)

    def _module_grad_norms(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, module in self.model.named_children():
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            if grads:
                norms = torch._foreach_norm(grads)
                out[name] = torch.linalg.vector_norm(torch.stack(norms)).float()
        return out
