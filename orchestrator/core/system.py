"""The seam to the worker's processes: spawn, signal, sample memory, read the clock.

Everything the supervisor and the night runner do to processes goes through :class:`System`
(one-shot commands outside a night's supervision — notify, service, join, preflight's runs, the
sleep inhibitor — call the OS directly);
unit tests replace it with a recording double (tests/unit/test_supervisor_unit.py), integration
tests use the real one. Readings that are unavailable come back as ``None``, never an exception.

- ``spawn`` starts the worker in its own session (so its process group is its pid and a signal
  reaches its DataLoader children), stdout+stderr appended to a log file.
- ``signal_group`` signals the whole group; ``poll`` reaps a child (returncode, negative for a
  signal) or, for a process we did not start (left by a previous daemon), reports whether it
  is gone.
- Liveness is always pid *and* create time (:func:`process_alive`; a pid without its create time
  is never taken for ours: pids are reused). ``stop_group`` is the one TERM → wait → KILL
  escalation for a process we may not have started (an orphan left by a crashed daemon).
- ``sample`` reads the worker's RSS, the memory the worker tree (worker + children) really owns
  (``tree_mem``, named by ``tree_measure``), the tree's plain RSS sum (``tree_rss``, for old
  readers), system available memory, swap used, and GPU memory through NVML when ``pynvml``
  (nvidia-ml-py) is importable: the tree's per-process usage when NVML lists those pids, else
  the whole card's usage, flagged ``gpu_whole_card`` (in a container NVML reports the host's
  pids, so nothing matches; other processes on the card count then) — of the fullest GPU when
  there are several (one rank per GPU: the device ceiling is per device), with that GPU's
  total (``gpu_total``) and the host's RAM (``sys_total``).
- ``oom_kill_counts`` reads the kernel's own count of out-of-memory kills, for telling a host
  OOM kill from any other SIGKILL: the ``oom_kill`` line of the worker's cgroup (v2
  ``memory.events``, v1 ``memory.oom_control``: the victim's cgroup counts it, whichever limit
  fired), else of the system-wide ``/proc/vmstat``; world-readable where the kernel log is
  not. Empty on macOS and wherever none is readable.
- The tree measure is PSS where the OS gives it (Linux: a page shared by k processes counts 1/k
  in each, so a memory-mapped dataset read by 4 loader workers counts once), else USS (macOS:
  private pages only), else RSS. PSS/USS come from ``memory_full_info``, which walks the page
  tables (/proc/PID/smaps: ~20 ms per 700 MB of RSS, measured), so it is read at most every
  ``full_interval_s`` (30 s) or when the tree's pids change; in between ``tree_mem`` is the last
  full reading plus the tree's RSS change since then (growth shows at once, at RSS cost).
- The readings themselves (the sample record, PSS/USS, NVML's per-GPU choice, the kernel's
  OOM-kill counter files) are parsed in :mod:`orchestrator.core.meminfo`; only this seam calls it.
- ``device_env`` adds, on macOS, ``PYTORCH_MPS_HIGH_WATERMARK_RATIO=1.0`` and
  ``PYTORCH_MPS_LOW_WATERMARK_RATIO=0.8`` (unless set) so MPS raises OOM instead of swapping.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from orchestrator.core.meminfo import (
    VMSTAT,
    MemSample,
    cgroup_oom_file,
    gpu_reading,
    oom_kill_count,
    tree_full_measure,
)


def process_alive(pid: int | None, create_time: float | None) -> bool:
    """Whether ``pid`` runs and is the process that started at ``create_time`` (± 1 s).

    The only liveness check of the orchestrator. Without a create time nothing can be
    verified (the pid may have been reused), so the answer is False: callers record the create
    time together with the pid, and a zombie is not alive."""
    if not pid or create_time is None:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - create_time) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return False


class System:
    """Real processes, signals, psutil/NVML and clocks."""

    def __init__(self, full_interval_s: float = 30.0) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._nvml: Any = None
        self._nvml_tried = False
        self.full_interval_s = full_interval_s
        # last full (PSS/USS) reading: (monotonic time, pids, measure, owned bytes, RSS sum)
        self._full: tuple[float, frozenset[int], str, int, int] | None = None
        self._oom_paths: dict[int, str] = {}  # pid → its OOM-kill counter file ("" = none)

    # -- clock ----------------------------------------------------------------------------
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    # -- processes ------------------------------------------------------------------------
    def device_env(self) -> dict[str, str]:
        env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
        if sys.platform == "darwin":
            for key, value in (
                ("PYTORCH_MPS_HIGH_WATERMARK_RATIO", "1.0"),
                ("PYTORCH_MPS_LOW_WATERMARK_RATIO", "0.8"),
            ):
                env[key] = os.environ.get(key, value)
        return env

    def spawn(
        self,
        argv: list[str],
        cwd: str | Path,
        log_path: str | Path,
        env: dict[str, str] | None = None,
    ) -> int:
        """Start ``argv`` in a new session; returns its pid (= its process group id)."""
        full_env = dict(os.environ)
        full_env.update(self.device_env())
        full_env.update(env or {})
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=str(cwd),
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        return proc.pid

    def owns(self, pid: int) -> bool:
        """Whether this System spawned ``pid`` (and so can wait() on it)."""
        return pid in self._children

    def poll(self, pid: int) -> tuple[bool, int | None]:
        """``(exited, returncode)``; returncode is None for a process we did not start."""
        proc = self._children.get(pid)
        if proc is not None:
            code = proc.poll()
            return (code is not None), code
        try:
            p = psutil.Process(pid)
            return p.status() == psutil.STATUS_ZOMBIE, None
        except psutil.NoSuchProcess:
            return True, None

    def me(self) -> tuple[int, float]:
        """This process's pid and create time (what a lock file or the state records)."""
        proc = psutil.Process()
        return proc.pid, proc.create_time()

    def signal(self, pid: int, sig: int, create_time: float | None) -> bool:
        """Signal one process if it is still the one that started at ``create_time``."""
        if not self.is_alive(pid, create_time):
            return False
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def signal_group(self, pid: int, sig: int) -> None:
        """Signal the process group led by ``pid`` (falls back to the pid alone)."""
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill_group_leftovers(self, pid: int) -> None:
        """SIGKILL whatever is left of a group (orphaned DataLoader workers) after the leader."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def group_members(self, pgid: int) -> list[int]:
        """Live (non-zombie) processes of process group ``pgid``, leader included."""
        found = []
        for proc in psutil.process_iter(["pid", "status"]):
            with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
                if proc.info.get("status") != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                    found.append(proc.pid)
        return found

    def create_time(self, pid: int) -> float | None:
        try:
            return psutil.Process(pid).create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def is_alive(self, pid: int, create_time: float | None) -> bool:
        """Same pid *and* same start time (:func:`process_alive`)."""
        return process_alive(pid, create_time)

    def find_processes(self, args: list[str]) -> list[tuple[int, float]]:
        """(pid, create time) of live processes whose command line holds ``args`` in a row."""
        found = []
        n = len(args)
        for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
            cmd = proc.info.get("cmdline") or []
            if any(cmd[i : i + n] == args for i in range(len(cmd) - n + 1)):
                found.append((int(proc.info["pid"]), float(proc.info["create_time"])))
        return found

    def stop_group(
        self,
        pid: int,
        create_time: float | None,
        waits: tuple[float, ...],
        leftover_grace_s: float = 2.0,
    ) -> bool:
        """Escalate on the process group led by ``pid`` while that process is alive (pid +
        create time): wait ``waits[0]`` (a control-file stop may already be under way), then
        SIGTERM and wait ``waits[1]``, then SIGKILL and wait ``waits[2]``. True once it is gone.

        Once the leader is gone, the rest of its group (DataLoader workers that outlive it, or
        are still dying of the same SIGTERM) gets ``leftover_grace_s`` and then SIGKILL, and
        the call returns only when the group is empty (bounded by ``waits[-1]``): the next
        attempt must not start beside the last one's loaders and their memory.
        """
        steps = list(zip(waits, (None, signal.SIGTERM, signal.SIGKILL), strict=False))
        signalled = False
        for wait_s, sig in steps:
            if not self.is_alive(pid, create_time):
                break
            if sig is not None:
                self.signal_group(pid, sig)
                signalled = True
            end = self.monotonic() + wait_s
            while self.is_alive(pid, create_time) and self.monotonic() < end:
                self.sleep(0.2)
        if self.is_alive(pid, create_time):
            return False
        if signalled:
            self._drain_group(pid, leftover_grace_s, waits[-1] if waits else 10.0)
        return True

    def _drain_group(self, pgid: int, grace_s: float, kill_wait_s: float) -> None:
        """Wait ``grace_s`` for a leaderless group to empty, then SIGKILL it and wait."""
        for wait_s, kill in ((grace_s, False), (kill_wait_s, True)):
            if not self.group_members(pgid):
                return
            if kill:
                self.kill_group_leftovers(pgid)
            end = self.monotonic() + wait_s
            while self.group_members(pgid) and self.monotonic() < end:
                self.sleep(0.1)

    # -- sampling -------------------------------------------------------------------------
    def sample(self, pid: int) -> MemSample:
        worker = tree = None
        procs: list[psutil.Process] = []
        try:
            p = psutil.Process(pid)
            worker = p.memory_info().rss
            tree = worker
            procs.append(p)
            for child in p.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    tree += child.memory_info().rss
                    procs.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        mem, measure = self._tree_owned(procs, tree)
        avail = swap = ram = None
        with contextlib.suppress(Exception):
            vm = psutil.virtual_memory()
            avail, ram = vm.available, vm.total
            swap = psutil.swap_memory().used
        pids = [q.pid for q in procs]
        gpu = self._gpu_used(pids)
        return MemSample(
            self.wall(),
            worker,
            tree,
            avail,
            swap,
            gpu[0] if gpu else None,
            tree_mem=mem,
            tree_measure=measure,
            gpu_total=gpu[1] if gpu else None,
            gpu_whole_card=gpu[2] if gpu else None,
            sys_total=ram,
        )

    def oom_kill_counts(self, pid: int) -> dict[str, int]:
        """{counter file: the kernel's OOM-kill count} for ``pid`` (see the module docstring):
        its cgroup's ``memory.events`` when readable, else ``/proc/vmstat``; {} elsewhere. Read
        at launch and again once the worker is gone (pass the same pid: the cgroup path is
        remembered, the process need not be alive)."""
        path = self._oom_paths.get(pid)
        if path is None:
            path = cgroup_oom_file(pid) or (VMSTAT if Path(VMSTAT).is_file() else "")
            self._oom_paths[pid] = path
        count = oom_kill_count(path) if path else None
        return {path: count} if count is not None else {}

    def _tree_owned(
        self, procs: list[psutil.Process], rss: int | None
    ) -> tuple[int | None, str | None]:
        """(bytes the tree owns, measure name); see the module docstring for the cadence."""
        if rss is None or not procs:
            return None, None
        now, pids = self.monotonic(), frozenset(q.pid for q in procs)
        full = self._full
        if full is not None and full[1] == pids and now - full[0] < self.full_interval_s:
            return max(0, full[3] + rss - full[4]), full[2]
        measure, total = tree_full_measure(procs)
        if measure == "rss":
            self._full = None
            return rss, "rss"
        self._full = (now, pids, measure, total, rss)
        return total, measure

    def _gpu_used(self, pids: list[int]) -> tuple[int, int | None, bool] | None:
        """(bytes used, that GPU's total, whole card?) on the fullest GPU; None without NVML."""
        nv = self._nvml_module()
        if nv is None:
            return None
        try:
            per_device = []
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                mine = [
                    proc.usedGpuMemory
                    for proc in nv.nvmlDeviceGetComputeRunningProcesses(handle)
                    if proc.pid in pids and proc.usedGpuMemory
                ]
                info = nv.nvmlDeviceGetMemoryInfo(handle)
                per_device.append((sum(mine), bool(mine), int(info.used), int(info.total)))
            return gpu_reading(per_device)
        except Exception:
            return None

    def _nvml_module(self) -> Any:
        if not self._nvml_tried:
            self._nvml_tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:
                self._nvml = None
        return self._nvml
