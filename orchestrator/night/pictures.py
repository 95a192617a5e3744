"""Which end-of-run pictures belong to a night: those of its best checkpoint.

    found = pictures_of(views, best)          # the newest ``pictures`` event of ``best``, or None
    ev = picture_evidence(found, best, why)   # what the state records (a ``pictures`` decision)

The worker pictures the best checkpoint it knows at the end of its run
(``trainer/eval/pictures.py``: its ``best.pt``, else its last checkpoint); the night's best
(:mod:`orchestrator.policy.results`) may be another one — an earlier attempt's, or none
marked — so an event counts only when it names the same file or the same bytes (the sha256
in the checkpoint's sidecar: ``best.pt`` is a copy of a ``ckpt-*.pt``). A worker that failed to
picture the best is believed, not retried. The ending (:mod:`orchestrator.night.ending`)
records the result as a decision of kind ``pictures`` whose evidence the morning report reads
(:mod:`orchestrator.views.report.pictures`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator.core.fold import RunView

PICTURES = "pictures"  # the decision's kind and trigger


def sidecar_sha256(checkpoint: str) -> str | None:
    """The sha256 a checkpoint's ``.json`` sidecar records, or None."""
    try:
        meta = json.loads(Path(checkpoint + ".json").read_text())
    except (OSError, ValueError):
        return None
    sha = meta.get("sha256") if isinstance(meta, dict) else None
    return sha if isinstance(sha, str) and sha else None


def same_checkpoint(ev: dict[str, Any], best: str) -> bool:
    """The ``pictures`` event ``ev`` pictured ``best`` (same path, or same bytes)."""
    if str(ev.get("checkpoint")) == best:
        return True
    sha = sidecar_sha256(best)
    return sha is not None and ev.get("sha256") == sha


def pictures_of(views: Iterable[RunView], best: str | None) -> dict[str, Any] | None:
    """The newest ``pictures`` event of ``best`` among the runs' views (drawn, or the worker's
    reason why not), else None."""
    if not best:
        return None
    found = [ev for v in views for ev in v.pictures if same_checkpoint(ev, best)]
    return max(found, key=lambda ev: float(ev.get("ts", 0.0))) if found else None


def picture_evidence(ev: dict[str, Any] | None, best: str | None, why: str) -> dict[str, Any]:
    """The recorded evidence: the arrays' path and what they show, or ``problem`` (the
    worker's reason, else ``why``)."""
    if ev is None or ev.get("problem") or not ev.get("path"):
        problem = (ev or {}).get("problem") or why or "no pictures were drawn"
        return {"path": None, "checkpoint": best, "problem": problem}
    keys = ("path", "checkpoint", "epoch", "step", "indices", "seconds")
    return {**{k: ev.get(k) for k in keys}, "checkpoint": best, "problem": ""}
