"""Which runbook a recipe runs under when nobody names one: an explicit table.

    runbook_name_for("configs/overnight_training_aggressive.yaml")   # "aggressive"

A plan names each night's runbook; ``hjepa-night run`` and ``preflight`` take ``--runbook``.
Without it, a shipped recipe gets the runbook written for it (``RUNBOOK_FOR_RECIPE``, by the
config's file name) and any other config the conservative one — the runbook with the longest
timeouts and the gentlest ladders. ``orchestrator.core.runbook.default_runbook_for`` turns the
name into a file (``./runbooks`` first, then the shipped ones).
"""

from __future__ import annotations

from pathlib import PurePath

RUNBOOK_FOR_RECIPE: dict[str, str] = {
    "demo_conservative.yaml": "demo",
    "demo_aggressive.yaml": "demo",
    "overnight_training_conservative.yaml": "conservative",
    "overnight_training_aggressive.yaml": "aggressive",
}
DEFAULT_RUNBOOK = "conservative"


def runbook_name_for(config_path: str | PurePath) -> str:
    """The runbook's name (``runbooks/<name>.yaml``) for a recipe (see the module docstring)."""
    return RUNBOOK_FOR_RECIPE.get(PurePath(config_path).name, DEFAULT_RUNBOOK)


def runbook_choice(config_path: str | PurePath) -> str:
    """One line saying which runbook a config without ``--runbook`` runs under, and why (a
    copied or renamed recipe gets the default, which its user should know)."""
    name = PurePath(config_path).name
    chosen = runbook_name_for(config_path)
    if name in RUNBOOK_FOR_RECIPE:
        return f"runbook: {chosen} (the one written for {name})"
    return (
        f"runbook: {chosen} ({name} is not a shipped recipe, so the default: the longest "
        "timeouts and gentlest ladders; name another with --runbook)"
    )
