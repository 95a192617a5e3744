"""What every part of the worker's config shares: the strict base model and the errors.

A :class:`ConfigError`'s message names the file (and any ``--set``) and the key;
:func:`format_validation_error` words a pydantic error that way, an unknown key as "unknown key
(not in the schema; check the spelling)", or, for a key an earlier version had, what replaced
it (:data:`RETIRED_KEYS`). ``trainer.config`` re-exports all three.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

# Keys earlier versions accepted -> what to write instead (the schema still refuses them).
_PROBE_NOW = "the linear probe now fits to convergence with L-BFGS (trainer/eval/linear_probe.py); "
RETIRED_KEYS = {
    "evaluation.linear_probe.epochs": _PROBE_NOW + "to bound it use linear_probe.max_iter",
    "evaluation.linear_probe.lr": _PROBE_NOW + "it has no learning rate; delete the key",
    "evaluation.linear_probe.weight_decay": _PROBE_NOW
    + "its L2 is chosen from linear_probe.l2_grid on the training split",
}


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            retired = RETIRED_KEYS.get(loc)
            msg = (
                f"key no longer used: {retired}"
                if retired
                else "unknown key (not in the schema; check the spelling)"
            )
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
