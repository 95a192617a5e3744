"""Checkpoints: atomic, verified, pruned, never a silent restart.

Layout in ``RUN_DIR/checkpoints/``::

    ckpt-e0003-s00000120.pt        torch.save of the complete training state
    ckpt-e0003-s00000120.pt.json   sidecar: epoch, step, samples_in_epoch, loss, sha256, bytes,
                                   created, config_hash, reason
    best.pt / best.pt.json         copy of the best checkpoint by checkpoint.metric

A checkpoint is written to a temp file, fsynced and renamed; the sidecar is written (also
atomically) after the data, so a checkpoint without a sidecar is incomplete and is never used.
Then the write is VERIFIED: the file is re-read, its sha256 must match the sidecar and it must
``torch.load(weights_only=True)`` (memory-mapped: the structure is read, not every byte twice).
Only a verified save prunes older checkpoints; a failed one leaves them all on disk
(:class:`Saved` says which happened, the ``checkpoint`` event reports it as ``verified``).
Loading verifies size and sha256 and uses ``torch.load(weights_only=True)``. ``resolve`` picks the
newest good checkpoint (``auto``) or the requested one; a corrupt one is reported through
``on_reject`` and the previous good one in the same folder is used instead. If none is usable
:class:`NoCheckpointError` is raised — the caller stops with an error, it never starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.events import atomic_write_text

_NAME = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")


class NoCheckpointError(RuntimeError):
    """A resume was requested and no usable checkpoint exists."""


class DiskFullError(OSError):
    """A checkpoint did not fit on its filesystem (its own fatal kind, ``disk``: the files
    already written stay as they were; the supervisor frees old checkpoints or ends the
    night instead of restarting into the same wall)."""


_WRITE_FAILED = ("unexpected pos", "file write failed", "no space left")
MB = 1024 * 1024


def free_mb(directory: str | Path) -> float:
    """Free space at ``directory`` (or its nearest existing parent), in MB."""
    d = Path(directory)
    while not d.exists() and d != d.parent:
        d = d.parent
    return shutil.disk_usage(d).free / MB


def as_disk_full(exc: BaseException, directory: Path, need_bytes: int) -> DiskFullError | None:
    """``exc`` as a DiskFullError when it is a full disk: ENOSPC/EDQUOT, or torch's serializer
    failing a write (``unexpected pos``: the errno is lost, only worker.log says "No space
    left") while less than about the checkpoint's size is free. None for anything else."""
    import errno

    enospc = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not enospc:
        text = str(exc).lower()
        if not isinstance(exc, RuntimeError) or not any(t in text for t in _WRITE_FAILED):
            return None
        if free_mb(directory) * MB > 1.5 * need_bytes + MB:
            return None
    need = f" (a checkpoint of about {need_bytes / MB:.0f} MB)" if need_bytes else ""
    return DiskFullError(f"disk full: {free_mb(directory):.0f} MB free at {directory}{need}")


class CorruptCheckpointError(RuntimeError):
    pass


class IncompatibleCheckpointError(NoCheckpointError):
    """The checkpoint lacks (or mis-shapes) weights of a module that is still on."""


@dataclass(frozen=True)
class Saved:
    path: Path
    verified: bool
    problem: str = ""  # why verification failed


def checkpoint_name(epoch: int, step: int) -> str:
    return f"ckpt-e{epoch:04d}-s{step:08d}.pt"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(str(path) + ".json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files with a sidecar, newest (highest step) first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and Path(str(p) + ".json").exists():
            found.append((int(m.group(2)), int(m.group(1)), p))
    found.sort(reverse=True)
    return [p for _, _, p in found]


def verify(path: Path) -> dict[str, Any]:
    """Sidecar present and matching (size + sha256); returns the sidecar."""
    if not path.exists():
        raise CorruptCheckpointError(f"{path}: not found")
    meta = read_sidecar(path)
    if meta is None:
        raise CorruptCheckpointError(f"{path}: no sidecar {path.name}.json (incomplete write)")
    size = path.stat().st_size
    if size != meta.get("bytes"):
        raise CorruptCheckpointError(f"{path}: size {size} != recorded {meta.get('bytes')}")
    digest = _sha256(path)
    if digest != meta.get("sha256"):
        raise CorruptCheckpointError(f"{path}: sha256 mismatch (file damaged)")
    return meta


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    verify(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling error, truncated zip, ...
        raise CorruptCheckpointError(f"{path}: cannot be loaded ({exc})") from exc


def verify_written(path: Path) -> None:
    """A fresh write reads back: sha256 matches the sidecar and it loads with weights_only."""
    verify(path)
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CorruptCheckpointError(f"{path}: does not load with weights_only ({exc})") from exc


def resolve(
    request: str,
    checkpoint_dir: Path,
    on_reject: Callable[[Path, str], None],
) -> tuple[Path, dict[str, Any]]:
    """``request`` is ``auto`` (newest good in ``checkpoint_dir``) or a path to a checkpoint.

    Returns (path, loaded state). Corrupt candidates are reported and skipped, falling back to
    older checkpoints in the same folder.
    """
    if request == "auto":
        candidates = list_checkpoints(checkpoint_dir)
        if not candidates:
            raise NoCheckpointError(f"--resume auto: no checkpoint in {checkpoint_dir}")
    else:
        wanted = Path(request)
        if wanted.is_dir():  # a run dir or a checkpoints dir
            folder = wanted / "checkpoints" if (wanted / "checkpoints").is_dir() else wanted
            candidates = list_checkpoints(folder)
        elif not wanted.exists() and not wanted.parent.is_dir():
            raise NoCheckpointError(f"--resume {request}: not found")
        else:
            older = [p for p in list_checkpoints(wanted.parent) if _older_or_same(p, wanted)]
            candidates = [wanted] + [p for p in older if p != wanted]
        if not candidates:
            raise NoCheckpointError(f"--resume {request}: no checkpoint there")
    why: list[str] = []
    for path in candidates:
        try:
            return path, load(path)
        except CorruptCheckpointError as exc:
            on_reject(path, str(exc))
            why.append(f"{path.name}: {str(exc).split(': ', 1)[-1]}")
    raise NoCheckpointError(f"--resume {request}: no usable checkpoint ({'; '.join(why)})")


def _older_or_same(candidate: Path, wanted: Path) -> bool:
    a, b = _NAME.match(candidate.name), _NAME.match(wanted.name)
    if not a or not b:
        return False
    return int(a.group(2)) <= int(b.group(2))


class CheckpointWriter:
    """Saves checkpoints atomically and prunes to ``keep_last_k`` (best.pt is kept apart)."""

    def __init__(self, directory: str | Path, keep_last_k: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep_last_k = max(2, keep_last_k)

    def save(self, state: dict[str, Any], meta: dict[str, Any]) -> Saved:
        """Write, verify (re-read: sha256 vs sidecar, weights_only load), prune if verified."""
        path = self.dir / checkpoint_name(meta["epoch"], meta["step"])
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            written = Path(tmp).stat().st_size if Path(tmp).exists() else 0
            Path(tmp).unlink(missing_ok=True)
            full = as_disk_full(exc, self.dir, max(written, self._last_size()))
            if full is not None:
                raise full from exc
            raise
        sidecar = dict(meta, bytes=path.stat().st_size, sha256=_sha256(path), created=time.time())
        try:
            atomic_write_text(str(path) + ".json", json.dumps(sidecar, indent=1))
        except OSError as exc:
            full = as_disk_full(exc, self.dir, sidecar["bytes"])
            if full is None:
                raise
            path.unlink(missing_ok=True)  # a checkpoint without its sidecar is not one
            raise full from exc
        try:
            verify_written(path)
        except CorruptCheckpointError as exc:
            return Saved(path, False, str(exc))
        self._prune()
        return Saved(path, True)

    def _last_size(self) -> int:
        found = list_checkpoints(self.dir)
        return found[0].stat().st_size if found else 0

    def mark_best(self, path: Path, metric: str, value: float) -> Path:
        best = self.dir / "best.pt"
        tmp = self.dir / ".best.pt.tmp"
        try:
            shutil.copyfile(path, tmp)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            full = as_disk_full(exc, self.dir, path.stat().st_size)
            if full is not None:
                raise full from exc
            raise
        os.replace(tmp, best)
        meta = dict(read_sidecar(path) or {}, source=path.name, metric=metric, value=value)
        atomic_write_text(str(best) + ".json", json.dumps(meta, indent=1))
        return best

    def _prune(self) -> None:
        for old in list_checkpoints(self.dir)[self.keep_last_k :]:
            old.unlink(missing_ok=True)
            Path(str(old) + ".json").unlink(missing_ok=True)
