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
``hang_at_step``, ``collapse_at_step`` (the representation collapses), ``diverge_at_step`` (a
finite blow-up of the weights), ``sigkill_at_step`` (rank ``sigkill_rank`` SIGKILLs itself: a
dead rank) — each one-shot, remembered in ``faults.fired.json`` so a restart from an
earlier checkpoint passes it — and ``oom_above_micro_batch`` and ``step_delay_s`` (always).
:class:`FaultInjector` (an object the worker holds) applies them before each optimizer step,
except ``step_delay_s``, which the loop sleeps after it. With several ranks
every rank applies them, except ``oom_at_step`` with ``oom_rank`` and ``hang_at_step`` with
``hang_rank`` (that rank only) and the SIGKILL (``sigkill_rank`` only). Which faults have fired
is the writer's record (``faults.fired.json`` in its run dir), broadcast to every rank at start
and resume, so every node passes the same faults. ``check_gradients`` installs
:func:`require_gradients` on the optimizer: a check, not a fault.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.config.features import FEATURE_KEYS
from trainer.events import FAULTS_FIRED_FILE, atomic_write_text

if TYPE_CHECKING:  # no import cycle at run time: the model and the step import this module
    from trainer.config.run import FaultsConfig
    from trainer.runtime.dist import Dist
    from trainer.runtime.emitter import Emitter
    from trainer.train.step import TrainStep

_INJECT: dict[str, str | None] = {"feature": None}


class FeatureError(RuntimeError):
    """An exception attributed to an optional feature."""

    def __init__(self, feature: str, message: str) -> None:
        super().__init__(f"[{feature}] {message}")
        self.feature = feature


class GradientlessParameterError(RuntimeError):
    """A trainable parameter reached an optimizer step without a gradient."""


def require_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """``faults.check_gradients``: before every ``optimizer.step()``, raise
    :class:`GradientlessParameterError` naming each optimized parameter with no gradient (one
    pass over the parameter list, no device work)."""
    names = {id(p): n for n, p in model.named_parameters()}
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    untracked = [
        n for n, p in model.named_parameters() if p.requires_grad and id(p) not in optimized
    ]
    if untracked:
        raise GradientlessParameterError(f"trainable but not optimized: {', '.join(untracked)}")

    def check(opt: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        missing = [names[id(p)] for g in opt.param_groups for p in g["params"] if p.grad is None]
        if missing:
            shown = ", ".join(missing[:8]) + (
                f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""
            )
            raise GradientlessParameterError(
                f"{len(missing)} trainable parameter(s) without a gradient at an optimizer "
                f"step: {shown}"
            )

    optimizer.register_step_pre_hook(check)


def set_injected_feature(name: str | None) -> None:
    """Arm ``faults.raise_in_feature`` for this process (None disarms)."""
    _INJECT["feature"] = name


class _FeatureScope:
    """The context of :func:`feature_scope`: a plain class (no generator), so ``torch.compile``
    traces through it inside the compiled forward on every torch it runs on."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        if _INJECT["feature"] == self.name:
            raise FeatureError(
                self.name, f"injected fault in feature {self.name!r} (faults.raise_in_feature)"
            )

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, FeatureError) or not isinstance(exc, Exception):
            return False
        from trainer.runtime.device import is_oom

        if is_oom(exc):  # memory exhaustion is not the feature's fault
            return False
        raise FeatureError(self.name, f"{type(exc).__name__}: {exc}") from exc


def feature_scope(name: str) -> _FeatureScope:
    """The scope of the optional feature ``name`` (one of ``trainer.config.features``)."""
    if name not in FEATURE_KEYS:
        raise ValueError(f"{name!r} is not an optional feature (trainer/config/features.py)")
    return _FeatureScope(name)


@torch.no_grad()
def collapse_representation(model: Any) -> None:
    """``faults.collapse_at_step``: the final LayerNorm gains of both encoders → 0, so every
    image gets the same embedding (the norm's bias): a collapsed representation."""
    for enc in (model.encoder, model.target_encoder):
        enc.vit.norm.weight.zero_()


@torch.no_grad()
def blow_up_weights(model: Any, seed: int, scale: float = 3.0, heads: float = -10.0) -> None:
    """``faults.diverge_at_step``: a finite blow-up. Gaussian noise ``scale`` × each tensor's
    own std added to the context encoder's and the predictor's weights, and the predictor's
    output heads multiplied by ``heads`` (large, sign flipped), so the loss jumps several-fold
    and stays up while training undoes it."""
    gen = torch.Generator().manual_seed(seed)
    for module in (model.encoder, model.predictor):
        for p in module.parameters():
            if p.ndim >= 2:
                noise = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
                p.add_(noise * scale * float(p.detach().float().std()))
    for head in model.predictor.heads:
        head.weight.mul_(heads)


class FaultInjector:
    """The step faults (``faults.*``, test aids) of one attempt. Owns the record of the
    one-shot faults that have ``fired`` and the overflow steps still to inject; acts on the
    model and the step function it is given."""

    def __init__(
        self,
        faults: FaultsConfig,
        run_dir: Path,
        dist: Dist,
        ev: Emitter,
        model: Any,
        step_fn: TrainStep,
        device: torch.device,
    ) -> None:
        self.f, self.run_dir, self.dist, self.ev = faults, run_dir, dist, ev
        self.model, self.step_fn, self.device = model, step_fn, device
        self.fired = dist.broadcast(self.load_fired())  # the writer's, on every node
        f = faults
        set_injected_feature(f.raise_in_feature if f.raise_in_feature_after_step is None else None)
        self._overflow_fault_left = 0

    def load_fired(self, extra_dir: Path | None = None) -> set[str]:
        fired: set[str] = set()
        for d in filter(None, [self.run_dir, extra_dir]):
            p = d / FAULTS_FIRED_FILE
            if p.exists():
                fired |= set(json.loads(p.read_text()))
        return fired

    def carry_fired(self, previous_run_dir: Path) -> None:
        """A previous attempt's one-shot faults stay fired (the fault "passes" on restart);
        the writer's record is then every rank's: one fault history."""
        self.fired |= self.load_fired(previous_run_dir)
        if self.fired:
            atomic_write_text(self.run_dir / FAULTS_FIRED_FILE, json.dumps(sorted(self.fired)))
        self.fired = self.dist.broadcast(self.fired)

    def mark_fired(self, name: str) -> None:
        """Remember a one-shot fault (merged with the file: another rank may have written it)."""
        self.fired |= self.load_fired() | {name}
        atomic_write_text(self.run_dir / FAULTS_FIRED_FILE, json.dumps(sorted(self.fired)))

    def near(self, nxt: int) -> bool:
        """A step-addressed fault could fire at this launch: its number must be exact, so the
        loop settles the step in flight first."""
        f = self.f
        aimed = (
            f.sigkill_at_step,
            f.oom_at_step,
            f.nonfinite_at_step,
            f.grad_overflow_at_step,
            f.hang_at_step,
            f.raise_in_feature_after_step,
            f.collapse_at_step,
            f.diverge_at_step,
        )
        return any(a is not None and a in (nxt - 1, nxt) for a in aimed)

    def _injected_oom(self, why: str) -> str:
        """An injected OOM's text, naming the device the worker runs on (not always CUDA)."""
        dev = self.device
        kind = dev.type.upper() if isinstance(dev, torch.device) else "device"
        return f"{kind} out of memory on {dev}. Tried to allocate 2.00 GiB (injected: {why})"

    def inject(self, nxt: int, micro_batch: int) -> None:
        """The faults aimed at optimizer step ``nxt`` (and the always-on ones), before it."""
        f = self.f
        if f.oom_above_micro_batch is not None and micro_batch > f.oom_above_micro_batch:
            raise torch.OutOfMemoryError(
                self._injected_oom(
                    f"micro-batch {micro_batch} > faults.oom_above_micro_batch="
                    f"{f.oom_above_micro_batch}"
                )
            )
        mine = f.sigkill_rank == self.dist.rank
        if f.sigkill_at_step == nxt and mine and "sigkill" not in self.fired:
            self.mark_fired("sigkill")
            os.kill(os.getpid(), signal.SIGKILL)
        mine = f.oom_rank is None or f.oom_rank == self.dist.rank
        if f.oom_at_step == nxt and mine and "oom" not in self.fired:
            self.mark_fired("oom")
            raise torch.OutOfMemoryError(self._injected_oom(f"faults.oom_at_step={nxt}"))
        if (
            f.raise_in_feature
            and f.raise_in_feature_after_step is not None
            and nxt >= f.raise_in_feature_after_step
        ):
            set_injected_feature(f.raise_in_feature)
        if f.nonfinite_at_step == nxt and "nonfinite" not in self.fired:
            self.mark_fired("nonfinite")
            self.step_fn.poison_next = True
        if f.grad_overflow_at_step == nxt and "grad_overflow" not in self.fired:
            self.mark_fired("grad_overflow")
            self._overflow_fault_left = f.grad_overflow_steps
        if self._overflow_fault_left > 0:
            self._overflow_fault_left -= 1
            self.step_fn.overflow_next = True
        if f.collapse_at_step == nxt and "collapse" not in self.fired:
            self.mark_fired("collapse")
            collapse_representation(self.model)
        if f.diverge_at_step == nxt and "diverge" not in self.fired:
            self.mark_fired("diverge")
            blow_up_weights(self.model, seed=nxt)
        mine = f.hang_rank is None or f.hang_rank == self.dist.rank
        if f.hang_at_step == nxt and mine and "hang" not in self.fired:
            self.mark_fired("hang")
            self.ev.beat()  # the phase it hangs in (train) is known, then silence
            self.ev.freeze()
            while True:  # stuck: no progress, no heartbeat, until killed
                time.sleep(3600)
