"""Loading a checkpoint into a model whose optional features may have changed since it was saved.

    report = load_model_state(model, state["model"], off_features={"fpn"})
    status = load_optimizer_state(optimizer, state, model, partial=report.partial)

A fallback can switch a feature off between attempts (FPN off: the model has no ``fpn.*`` keys
and a one-head predictor). ``load_model_state`` loads every key that still fits (same name and
same shape) and reports ``dropped`` (checkpoint keys not loaded) and ``missing`` (model keys
not loaded: they keep their fresh initialisation); a mis-shaped key is in both. Only keys owned
by a feature that is now OFF (``trainer.model.hjepa.FEATURE_KEY_PREFIXES``) may differ; any other
difference — weights of a module that is still on — raises
:class:`~trainer.checkpoint.store.IncompatibleCheckpointError` (fatal ``resume``, exit 15).

``load_optimizer_state`` restores AdamW's state: the plain load when nothing changed, else by
parameter NAME (checkpoints record ``optimizer_params``: the names of each param group in
order), keeping the moments of every parameter that remains with the same shape. It returns
``"restored"`` or ``"reset"`` (no usable state: AdamW starts fresh, and the caller says so in a
``resume_partial`` event).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainer.checkpoint.store import IncompatibleCheckpointError
from trainer.model.hjepa import FEATURE_KEY_PREFIXES


@dataclass
class LoadReport:
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool(self.dropped or self.missing)


def owned_by_off_feature(
    key: str, off_features: set[str], prefixes: dict[str, tuple[str, ...]] = FEATURE_KEY_PREFIXES
) -> bool:
    return any(key.startswith(p) for f in off_features for p in prefixes.get(f, ()))


def load_model_state(
    model: nn.Module,
    saved: dict[str, torch.Tensor],
    off_features: set[str],
    prefixes: dict[str, tuple[str, ...]] = FEATURE_KEY_PREFIXES,
) -> LoadReport:
    own = model.state_dict()
    fits = {k: v for k, v in saved.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    report = LoadReport(
        dropped=sorted(k for k in saved if k not in fits),
        missing=sorted(k for k in own if k not in fits),
    )
    if not report.partial:
        model.load_state_dict(saved)
        return report
    bad = sorted(
        {
            k
            for k in report.dropped + report.missing
            if not owned_by_off_feature(k, off_features, prefixes)
        }
    )
    if bad:
        shown = ", ".join(bad[:8]) + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else "")
        raise IncompatibleCheckpointError(
            f"checkpoint does not fit the model: {len(bad)} key(s) missing or mis-shaped for "
            f"modules that are still on: {shown} (features off now: "
            f"{', '.join(sorted(off_features)) or 'none'})"
        )
    model.load_state_dict(fits, strict=False)
    return report


def optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """Names of each param group's parameters, in the optimizer's order (saved in checkpoints)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [[name_of[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], model: nn.Module, partial: bool
) -> str:
    saved = state.get("optimizer")
    if not saved:
        return "reset"
    if not partial:
        try:
            optimizer.load_state_dict(saved)
            return "restored"
        except (ValueError, KeyError, RuntimeError):
            pass  # groups changed: match by name below
    names = state.get("optimizer_params")
    if not names:
        return "reset"
    try:
        remapped = _remap_by_name(saved, names, optimizer, model)
        optimizer.load_state_dict(remapped)
    except (ValueError, KeyError, RuntimeError, IndexError):
        return "reset"
    return "restored"


def _remap_by_name(
    saved: dict[str, Any],
    saved_names: list[list[str]],
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
) -> dict[str, Any]:
    old: dict[str, Any] = {}
    for group, names in zip(saved["param_groups"], saved_names, strict=True):
        for idx, name in zip(group["params"], names, strict=True):
            if idx in saved["state"]:
                old[name] = saved["state"][idx]
    current = optimizer.state_dict()
    now_names = optimizer_param_names(model, optimizer)
    params = dict(model.named_parameters())
    new_state: dict[int, Any] = {}
    for group, names in zip(current["param_groups"], now_names, strict=True):
        for idx, name in zip(group["params"], names, strict=True):
            st = old.get(name)
            if st is None:
                continue
            moments = [v for k, v in st.items() if k != "step" and isinstance(v, torch.Tensor)]
            if all(tuple(m.shape) == tuple(params[name].shape) for m in moments):
                new_state[idx] = st
    return {"state": new_state, "param_groups": current["param_groups"]}
