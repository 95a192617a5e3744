"""One optimizer step of H-JEPA: the hot path.

    step = TrainStep(model, cfg, device, precision)
    result = step(micro_batches, lr=..., momentum=...)          # launch, then read: one sync
    pending = step.launch(micro_batches, lr=..., momentum=...)  # the worker's way:
    ...                                                          # launch the next step first,
    result = pending.result()                                    # then read this one

For each micro-batch: forward under autocast, ``loss / n_micro`` backward (the loss is averaged
over the accumulation, not summed; scaled by the GradScaler under fp16). The step's statistics
(loss, gradient norm, levels, parts, per-module norms) go into one vector that is copied to the
host WITHOUT waiting (pinned memory and a CUDA event on CUDA), so the worker reads step N's
numbers after it has launched step N+1 and the device never idles on the host. What to do
about a bad step is decided on the device from the same vector:

- loss non-finite → ``finite=False``: nothing is applied (the caller stops: ``nonfinite``, at
  most one step later than the bad one, which itself changed nothing);
- loss finite, gradients not (a GradScaler overflow, or a non-finite norm without a scaler)
  → ``overflow=True``: the step is SKIPPED on purpose — no optimizer step, no EMA update, the
  gradients are dropped, and with a scaler its scale backs off (``scaler.update()`` sees the
  overflow ``unscale_`` recorded). This is routine under fp16, not a failure;
- otherwise clip, AdamW, and one EMA update of the target encoder.

The skip costs no sync where ``Kernels.skip_on_device`` (CUDA, CPU): fused AdamW gets the
"bad" flag as its ``found_inf`` (the kernel then changes no parameter, moment or step count,
exactly as under GradScaler) and the EMA's lerp weight is multiplied by "applied" (0 or 1).
Elsewhere (MPS) the host reads the vector before the optimizer step, as a plain loop would.

With several ranks (``dist.world > 1``) the forward runs through the DDP wrapper ``ddp``:
gradients are averaged across ranks at the last micro-batch (the others run under
``no_sync()``), and the statistics vector is all-reduced once, carrying the caller's ``extra``
numbers too (summed over ranks: stop flags and control decisions, see ``trainer.train.loop``). The
skip decision is taken from the reduced vector, so every rank takes or skips the same step.

Every kernel flag (fused AdamW, foreach clipping/norms/lerp, autocast dtype, scaler) comes from
``trainer.runtime.device.kernels_for``. The LR is set on every step from the caller's schedule, so
an LR read from a checkpoint's optimizer state never survives a resume.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.config import Config
from trainer.data.masks import Batch
from trainer.model.hjepa import HJEPA
from trainer.runtime.copies import host_vector
from trainer.runtime.device import Precision, kernels_for
from trainer.runtime.dist import Dist


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


Layout = tuple[int, list[str], list[str], int]  # levels, part names, module names, extras


class PendingStep:
    """A launched step's statistics on their way to the host; :meth:`result` waits for them
    (only for them: on CUDA a pinned non-blocking copy and an event recorded right after the
    step, so later steps already queued keep the device busy)."""

    def __init__(self, host: torch.Tensor, layout: Layout, done: Any = None) -> None:
        self._host, self._layout, self._done = host, layout, done
        self._result: StepResult | None = None

    @classmethod
    def start(cls, vec: torch.Tensor, layout: Layout) -> PendingStep:
        vec = vec.detach().float()
        if vec.device.type == "cuda":
            host = torch.empty(vec.shape, dtype=vec.dtype, pin_memory=True)
            host.copy_(vec, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            return cls(host, layout, done)
        return cls(vec, layout)  # CPU: already there; elsewhere .cpu() when read

    @classmethod
    def now(cls, vec: torch.Tensor, layout: Layout) -> PendingStep:
        return cls(vec.detach().float(), layout)

    def result(self) -> StepResult:
        if self._result is None:
            if self._done is not None:
                self._done.synchronize()
            self._result = _unpack(self._host.cpu().tolist(), self._layout)
        return self._result


def _unpack(stats: list[float], layout: Layout) -> StepResult:
    n_levels, names, modules, n_extra = layout
    extra = stats[len(stats) - n_extra :] if n_extra else []
    stats = stats[: len(stats) - n_extra]
    loss_v, gn_v = stats[0], stats[1]
    if not math.isfinite(loss_v) or not math.isfinite(gn_v):
        finite = math.isfinite(loss_v)
        return StepResult(finite, loss_v, [], {}, gn_v, overflow=finite, extra=extra)
    levels = stats[2 : 2 + n_levels]
    rest = stats[2 + n_levels :]
    parts = dict(zip(names, rest[: len(names)], strict=True))
    per_module = dict(zip(modules, rest[len(names) :], strict=True)) if modules else None
    return StepResult(True, loss_v, levels, parts, gn_v, per_module, extra=extra)


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
        self.skip_on_device = self.kernels.skip_on_device  # else the host decides
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
        """Launch one step and wait for its numbers (one host sync)."""
        return self.launch(micro_batches, lr, momentum, grad_norms, extra).result()

    def launch(
        self,
        micro_batches: list[Batch],
        lr: float,
        momentum: float,
        grad_norms: bool = False,
        extra: list[float] | None = None,
    ) -> PendingStep:
        """Run one step's forward, backward, (skippable) AdamW and EMA; return its numbers as a
        :class:`PendingStep` whose copy to the host is under way (see the module docstring)."""
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
        n_extra = len(extra or [])
        if n_extra:
            tail = host_vector(list(extra or []), vec.device)  # pinned, async on CUDA
            vec = torch.cat([vec / self.dist.world, tail])
        if self.dist.world > 1:  # the rank mean of every statistic, the sum of the extras
            vec = self.dist.sum_(vec if n_extra else vec / self.dist.world)
        layout = (len(levels_t), names, list(modules), n_extra)
        if not self.skip_on_device:  # the host decides (one sync before the optimizer step)
            pending = PendingStep.now(vec, layout)
            res = pending.result()
            self._apply(momentum, None if res.finite and not res.overflow else False)
            return pending
        bad = (~(torch.isfinite(vec[0]) & torch.isfinite(vec[1]))).float()
        pending = PendingStep.start(vec, layout)
        self._apply(momentum, 1.0 - bad, found_inf=bad)
        return pending

    def _apply(
        self,
        momentum: float,
        applied: torch.Tensor | bool | None,
        found_inf: torch.Tensor | None = None,
    ) -> None:
        """AdamW + EMA unless ``applied`` is False; a tensor ``applied`` (with ``found_inf`` =
        1 − applied) gates both on the device. The gradients are dropped either way, and the
        scaler (fp16) updates its scale from what ``unscale_`` found."""
        if applied is not False:
            if found_inf is not None:  # fused AdamW skips the whole update where found_inf = 1
                self.optimizer.grad_scale = None  # type: ignore[attr-defined]
                self.optimizer.found_inf = found_inf  # type: ignore[attr-defined]
            try:
                self.optimizer.step()  # gradients are unscaled
            finally:
                if found_inf is not None:
                    del self.optimizer.grad_scale  # type: ignore[attr-defined]
                    del self.optimizer.found_inf  # type: ignore[attr-defined]
        if self.scaler is not None:
            self.scaler.update()  # an overflow: the scale backs off
        self.optimizer.zero_grad(set_to_none=True)
        if applied is not False:
            gate = applied if isinstance(applied, torch.Tensor) else None
            self.model.update_target(momentum, self.kernels, applied=gate)

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
