"""Room on the disk for a night: what a full disk lets the night runner free.

The runbook's disk rung (``policy.decide``: a checkpoint that did not fit) frees the night's
checkpoints beyond the newest ``keep`` good ones of its lineage, and the leftovers of failed
writes (``.tmp-*`` files); the checkpoint the next attempt resumes from and every ``best.pt``
stay. Nothing outside the night's own ``checkpoints/`` folders is touched.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.core.state import Night
from orchestrator.night.history import lineage

MB = 2**20


def free_mb(directory: str | Path) -> float:
    """Free space at ``directory`` (or its nearest existing parent), in MB."""
    d = Path(directory)
    while not d.exists() and d != d.parent:
        d = d.parent
    return shutil.disk_usage(d).free / MB


def _checkpoints(folder: Path) -> list[Path]:
    """The worker's checkpoint files in ``folder`` (``ckpt-e<epoch>-s<step>.pt``)."""
    return sorted(folder.glob("ckpt-e*-s*.pt"))


@dataclass
class Freed:
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    free_mb: float = 0.0
    where: str = ""

    def sentence(self) -> str:
        names = ", ".join(Path(f).name for f in self.files[:6]) or "nothing to free"
        more = f" and {len(self.files) - 6} more" if len(self.files) > 6 else ""
        return (
            f"freed {len(self.files)} file(s), {self.bytes / 2**20:.0f} MB ({names}{more}); "
            f"{self.free_mb:.0f} MB free at {self.where}"
        )


def free_old_checkpoints(night: Night, keep: int, resume_from: str | None) -> Freed:
    """Delete the night's checkpoints beyond the newest ``keep`` good ones (with sidecars) and
    failed-write leftovers; ``resume_from`` and ``best.pt`` are always kept."""
    refs = sorted(lineage(night), key=lambda r: (r.step, r.ts), reverse=True)
    kept = {str(Path(r.path).resolve()) for r in refs[:keep]}
    if resume_from:
        kept.add(str(Path(resume_from).resolve()))
    out = Freed()
    for att in night.attempts:
        folder = Path(att.run_dir) / "checkpoints"
        if not folder.is_dir():
            continue
        out.where = str(folder.parent.parent)
        doomed = [p for p in _checkpoints(folder) if str(p.resolve()) not in kept]
        doomed += list(folder.glob(".tmp-*")) + list(folder.glob(".best.pt.tmp"))
        for p in doomed:
            for f in (p, Path(str(p) + ".json")):
                with contextlib.suppress(OSError):
                    size = f.stat().st_size
                    f.unlink()
                    out.files.append(str(f))
                    out.bytes += size
    if night.attempts:
        out.where = out.where or str(Path(night.attempts[-1].run_dir).parent)
        out.free_mb = free_mb(out.where)
    return out
