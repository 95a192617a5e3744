"""Memory, judged: the two ceilings a live worker is held to, and whether a SIGKILL was an
out-of-memory kill. Pure (see :mod:`orchestrator.policy.decide`, which calls both).

- Host ceiling ``memory.ceiling_gb``: the worker tree's memory (PSS/USS, else RSS).
- Device ceiling ``memory.device_fraction`` of the device's own total: the worker's device
  reading (with the total it reports) and NVML's (with that card's total). No total, no device
  ceiling (a CPU). Whole-card NVML usage is flagged, and counts only without a worker reading.
- A SIGKILL is memory trouble only with evidence (:func:`kill_oom_evidence`).
"""

from __future__ import annotations

from orchestrator.core.runbook import Runbook
from orchestrator.core.units import GB
from orchestrator.policy.types import Observation


def memory_trip(obs: Observation, rb: Runbook, near: float = 1.0) -> dict[str, object] | None:
    """The first reading over ``near`` × its ceiling: the worker tree's memory against the host
    ceiling (``memory.ceiling_gb``); the worker's device reading and NVML's GPU reading against
    the device ceiling (``memory.device_fraction`` of that device's total; no total, no device
    ceiling: a CPU's "device" memory is the host's). NVML's whole-card usage (it matched none
    of the worker's pids: a container) counts only while the worker reports no device reading
    of its own, so a card's other tenants do not shrink this batch. Then swap growth. None:
    nothing trips."""
    m = rb.memory
    share = "" if near >= 1.0 else f"{near:.0%} of "
    host = m.ceiling_gb * GB
    if obs.tree_mem is not None and obs.tree_mem > near * host:
        return {
            "what": f"worker tree memory ({obs.tree_measure}) {obs.tree_mem / GB:.2f} GB over "
            f"{share}the host ceiling {m.ceiling_gb:g} GB",
            "tree_mem_gb": round(obs.tree_mem / GB, 3),
            "ceiling_gb": m.ceiling_gb,
        }
    whole = " (whole-card usage: NVML matched none of the worker's processes)"
    devices = (
        ("device_mem", obs.device_mem, obs.device_total, "device memory the worker reports", ""),
        ("gpu_used", obs.gpu_used, obs.gpu_total or obs.device_total, "GPU memory", whole),
    )
    for name, value, total, label, note in devices:
        if name == "gpu_used" and obs.gpu_whole_card and obs.device_mem is not None:
            continue  # the worker's own reading, not the card's other tenants
        ceiling = m.device_ceiling(total)
        if value is None or ceiling is None or total is None or value <= near * ceiling:
            continue
        card = note if name == "gpu_used" and obs.gpu_whole_card else ""
        evidence: dict[str, object] = {
            "what": f"{label} {value / GB:.2f} GB over {share}the device ceiling "
            f"{ceiling / GB:.1f} GB ({m.device_fraction:.0%} of {total / GB:.1f} GB){card}",
            name + "_gb": round(value / GB, 3),
            "device_ceiling_gb": round(ceiling / GB, 3),
            "device_total_gb": round(total / GB, 3),
        }
        if card:
            evidence["whole_card"] = True
        return evidence
    if obs.swap_growth is not None and obs.swap_growth > near * m.swap_growth_gb * GB:
        return {
            "what": f"swap grew {obs.swap_growth / GB:.2f} GB since launch "
            f"(over {share}the limit {m.swap_growth_gb:g} GB)",
            "swap_growth_gb": round(obs.swap_growth / GB, 3),
            "limit_gb": m.swap_growth_gb,
        }
    return None


def kill_oom_evidence(obs: Observation, rb: Runbook, kernel_oom_kills: int = 0) -> str | None:
    """Why a SIGKILL nobody here sent was an out-of-memory kill, or None: it was not.

    Memory trouble only when the kernel counted an OOM kill during the attempt
    (``kernel_oom_kills``, from the worker's cgroup or /proc/vmstat), or the memory in the
    samples before the kill (``obs``: the peaks of the last few) was near a ceiling:
    ``memory.near_fraction`` of the host or the device ceiling or of the swap limit, or system
    available memory under (1 − near_fraction) of the RAM (a machine out of memory for other
    reasons). Anything else — a person, a cluster's preemption, a rank killed on purpose — is
    restarted from its checkpoint as it was."""
    if kernel_oom_kills > 0:
        return f"the kernel counted {kernel_oom_kills} out-of-memory kill(s) during the attempt"
    near = rb.memory.near_fraction
    trip = memory_trip(obs, rb, near=near)
    if trip is not None:
        return f"{trip['what']} before it"
    avail, ram = obs.sys_available, obs.sys_total
    if avail is not None and ram and avail < (1.0 - near) * ram:
        return f"system available memory {avail / GB:.2f} GB of {ram / GB:.1f} GB before it"
    return None
