"""The one resolver for shipped data files (configs, plans, runbooks, the ImageNet-100 class
list), shared by the worker and the orchestrator (``orchestrator/core/datafiles.py`` re-exports
it; the worker imports nothing from the orchestrator).

In a clone the files are ``configs/`` and ``runbooks/`` beside the packages; in an installed
wheel they are package data under ``orchestrator/shipped/`` (pyproject maps the two folders
there; that folder sits beside ``trainer/`` in site-packages). A relative path such as
``configs/imagenet100_classes.txt`` resolves from the working directory first (an edited
``hjepa-night init`` copy wins), then from the shipped files.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DATA = PROJECT_ROOT / "orchestrator" / "shipped"


def shipped_root() -> Path:
    """The folder holding ``configs/`` and ``runbooks/``: the clone's root, else the package's."""
    if (PROJECT_ROOT / "configs" / "plans").is_dir():
        return PROJECT_ROOT
    return PACKAGE_DATA


def resolve_data(path: str | Path, base: Path | None = None) -> Path:
    """An absolute path as it is; a relative one from ``base`` (default: the working directory)
    if it exists there, else from the shipped files (returned even when missing, for errors)."""
    p = Path(path)
    if p.is_absolute():
        return p
    local = (base or Path.cwd()) / p
    if local.exists():
        return local.resolve()
    return shipped_root() / p
