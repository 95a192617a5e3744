"""What every part of the worker's config shares: the strict base model and the errors.

A :class:`ConfigError`'s message names the file (and any ``--set``) and the key;
:func:`format_validation_error` words a pydantic error that way, an unknown key as "unknown key
(not in the schema; check the spelling)". ``trainer.config`` re-exports all three.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


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
            msg = "unknown key (not in the schema; check the spelling)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
