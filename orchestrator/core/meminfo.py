"""What the OS says about memory, read for :class:`orchestrator.core.system.System` (the one OS
seam, which calls these; nothing else does): the sample record, the tree's PSS/USS measure,
NVML's per-GPU reading with its whole-card flag, and the kernel's OOM-kill counters.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil


@dataclass(frozen=True)
class MemSample:
    """One memory reading (bytes). The samples.jsonl line is ``as_json()``."""

    ts: float
    worker_rss: int | None
    tree_rss: int | None  # plain RSS sum over the tree (shared pages once per process)
    sys_available: int | None
    swap_used: int | None
    gpu_used: int | None
    tree_mem: int | None = None  # what the tree owns, by ``tree_measure``; fed to the policy
    tree_measure: str | None = None  # "pss" | "uss" | "rss"
    gpu_total: int | None = None  # the memory of the GPU ``gpu_used`` was read on
    gpu_whole_card: bool | None = None  # True: NVML matched none of the tree's pids (container)
    sys_total: int | None = None  # the host's RAM

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def tree_full_measure(procs: list[psutil.Process]) -> tuple[str, int]:
    """("pss"|"uss"|"rss", summed bytes) over ``procs``: PSS where every process reports it,
    else USS, else RSS (a process that vanished meanwhile counts 0)."""
    infos: list[Any] = []
    for q in procs:
        try:
            infos.append(q.memory_full_info())
        except psutil.NoSuchProcess:
            continue
        except (psutil.AccessDenied, OSError):
            infos = []
            break
    for measure in ("pss", "uss"):
        if infos and all(hasattr(i, measure) for i in infos):
            return measure, sum(int(getattr(i, measure)) for i in infos)
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += q.memory_info().rss
    return "rss", total


def gpu_reading(
    per_device: list[tuple[int, bool, int, int]],
) -> tuple[int, int | None, bool] | None:
    """From NVML's (tree's usage, tree seen, card used, card total) per GPU: the fullest GPU
    the tree uses, else — NVML listed none of its pids — the fullest card's whole usage,
    flagged (third item True)."""
    seen = [(used, total) for used, mine, _, total in per_device if mine]
    if seen:
        used, total = max(seen)
        return used, total, False
    if not per_device:
        return None
    _, _, used, total = max(per_device, key=lambda d: d[2])
    return used, total, True


VMSTAT = "/proc/vmstat"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_oom_file(pid: int) -> str | None:
    """The file holding ``pid``'s cgroup OOM-kill count when readable: cgroup v2
    ``memory.events``, v1 ``memory.oom_control``; inside a container whose cgroup mount is its
    own root (the path /proc names does not exist there), the mount's root file."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        _, controllers, rel = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        rel = rel.lstrip("/")
        if controllers == "" and rel:  # v2 (a bare "0::/" on a v1 host names nothing)
            candidates += [CGROUP_ROOT / rel / "memory.events"]
        elif "memory" in controllers.split(","):
            base = CGROUP_ROOT / "memory"
            candidates += [base / rel / "memory.oom_control", base / "memory.oom_control"]
    candidates.append(CGROUP_ROOT / "memory.events")
    for path in candidates:
        if oom_kill_count(str(path)) is not None:
            return str(path)
    return None


def oom_kill_count(path: str) -> int | None:
    """The ``oom_kill N`` count of a ``memory.events`` or ``/proc/vmstat`` file, or None."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None
