"""Where the shipped configs, plans and runbooks are, and how a relative path resolves (the
resolver itself is ``trainer/config/paths.py``, shared with the worker).

In a clone they are ``configs/`` and ``runbooks/`` beside the packages; in an installed wheel
they are package data under ``orchestrator/shipped/`` (pyproject maps the two folders there).
A relative path such as ``configs/demo_conservative.yaml`` or ``runbooks/demo.yaml`` resolves
from the user's working directory first (so ``hjepa-night init`` copies, edited, win), then
from the shipped files. ``hjepa-night init [DIR]`` writes editable copies.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from trainer.config.paths import PACKAGE_DATA as PACKAGE_DATA
from trainer.config.paths import PROJECT_ROOT as PROJECT_ROOT
from trainer.config.paths import resolve_data as resolve_data
from trainer.config.paths import shipped_root

KINDS = ("configs", "runbooks")


def plan_dirs() -> list[Path]:
    """Where named plans are looked up, in order: ./configs/plans, then the shipped plans."""
    dirs = [Path.cwd() / "configs" / "plans", shipped_root() / "configs" / "plans"]
    return list(dict.fromkeys(d.resolve() for d in dirs))


def init_dir(target: Path, force: bool = False) -> list[Path]:
    """Copy the shipped configs and runbooks into ``target`` (existing files are kept unless
    ``force``); returns the files written."""
    written = []
    for kind in KINDS:
        src = shipped_root() / kind
        for f in sorted(src.rglob("*")):
            if not f.is_file() or f.name == "__init__.py" or "__pycache__" in f.parts:
                continue
            dst = target / kind / f.relative_to(src)
            if dst.exists() and not force:
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
            written.append(dst)
    return written


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    written = init_dir(target, force=bool(args.force))
    for f in written:
        print(f"wrote {f}")
    kept = "" if args.force else " (existing files kept; --force overwrites)"
    print(f"{len(written)} files in {target}{kept}; plans and runbooks there now win over the "
          "shipped ones when hjepa-night runs from that directory")  # fmt: skip
    return 0
