"""How an attempt ended: exit code + ``fatal`` event + stderr tail → an exit kind.

The kinds are those of ``orchestrator.core.state.ExitKind``. Rules, first match wins:

1. The supervisor ended it on purpose: ``hang`` or ``memory`` (what it killed it for), or a stop
   it requested that ended in exit 3 → ``stopped``.
2. The worker's documented exit codes (``trainer.events``): 0 finished, 3 stopped, 10 oom,
   11 nonfinite, 12 feature, 13 data, 2 config, 15 resume, 16 disk; 14 (crash) is re-read as
   ``oom`` when the fatal message or the stderr tail carries an OOM text, as ``disk`` when it
   carries "No space left on device" (an old worker, or a write outside the checkpointer).
3. A signal nobody sent: SIGKILL (-9, or 137 from a shell) → ``oom`` when ``oom_evidence``
   says memory was near a ceiling or the kernel counted an OOM kill
   (:func:`orchestrator.policy.memory.kill_oom_evidence`), else ``killed`` (a person, a
   preemption, a rank that died: restarted as it was, not shrunk). Other signals → ``crash``.
4. Any other code: a ``fatal`` event's kind if there is one, else ``oom`` on an OOM text in
   stderr, else ``crash``.

OOM texts (``trainer.events.OOM_TEXTS`` in any case, plus ``OOM_LOG_PATTERNS``): "out of memory"
(CUDA, HIP, XPU, both MPS variants, "CUDA error: out of memory"), ``CUDNN_STATUS_NOT_SUPPORTED``,
``CUBLAS_STATUS_ALLOC_FAILED``, ``DefaultCPUAllocator: can't allocate memory``, ``MemoryError``,
and a DataLoader worker killed by a signal. The bare word "Killed" is never matched.
"""

from __future__ import annotations

import re
from typing import Any

from trainer.events import (
    EXIT_CRASH,
    EXIT_OK,
    EXIT_STOPPED,
    KIND_OF_EXIT_CODE,
    OOM_LOG_PATTERNS,
    OOM_TEXTS,
)

_OOM_PATTERNS = (
    *(re.compile(re.escape(text), re.IGNORECASE) for text in OOM_TEXTS),
    *(re.compile(pattern, re.MULTILINE) for pattern in OOM_LOG_PATTERNS),
)
SIGKILL = 9
DISK_FULL_TEXTS = ("No space left on device", "disk full:", "Disk quota exceeded")


def is_oom_text(text: str) -> bool:
    """Whether an error message or log tail shows an out-of-memory failure (any device)."""
    return any(p.search(text) for p in _OOM_PATTERNS)


def is_disk_full_text(text: str) -> bool:
    """Whether an error message or log tail shows a write that failed on a full disk."""
    return any(t in text for t in DISK_FULL_TEXTS)


def classify_exit(
    code: int | None,
    fatal: dict[str, Any] | None = None,
    stderr_tail: str = "",
    killed_for: str | None = None,
    stop_requested: bool = False,
    oom_evidence: str | None = None,
) -> tuple[str, str]:
    """Return ``(exit_kind, message)`` for one ended attempt (see the module rules)."""
    fatal_msg = str(fatal.get("message", "")) if fatal else ""
    last_line = _last_error_line(stderr_tail)
    if killed_for in ("hang", "memory"):
        why = "no heartbeat" if killed_for == "hang" else "memory over the runbook limit"
        return killed_for, f"stopped by the supervisor ({why}); exit {code}"
    if code == EXIT_OK:
        return "finished", "completed"
    if code == EXIT_STOPPED:
        return "stopped", "checkpointed and stopped on request"
    if code is not None and code in KIND_OF_EXIT_CODE:
        kind = KIND_OF_EXIT_CODE[code]
        if code == EXIT_CRASH and is_oom_text(fatal_msg + "\n" + stderr_tail):
            kind = "oom"
        elif code == EXIT_CRASH and is_disk_full_text(fatal_msg + "\n" + stderr_tail):
            kind = "disk"
        return kind, fatal_msg or last_line or f"exit {code}"
    if code is not None and code in (-SIGKILL, 128 + SIGKILL):
        if stop_requested:
            return "stopped", "killed after a stop request (SIGKILL)"
        which = f" ({last_line})" if last_line.startswith("trainer.launch:") else ""
        if oom_evidence:
            return "oom", f"killed by SIGKILL, out of memory: {oom_evidence}{which}"
        return "killed", (
            f"killed by SIGKILL from outside{which}; memory was not near a ceiling and the "
            "kernel reported no out-of-memory kill"
        )
    if code is not None and code < 0:
        if stop_requested:
            return "stopped", f"ended by signal {-code} after a stop request"
        return "crash", f"ended by signal {-code}"
    if fatal and fatal.get("kind") in KIND_OF_EXIT_CODE.values():
        return str(fatal["kind"]), fatal_msg
    if is_oom_text(stderr_tail):
        return "oom", last_line or "out of memory (from the worker log)"
    return "crash", last_line or f"exit {code}"


def _last_error_line(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith(("File ", "^", "~")):
            return line[:300]
    return ""
