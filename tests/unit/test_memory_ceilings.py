"""Two memory ceilings — the host's (GB, worker tree memory) and the device's (a share of the
device's own total) — from the runbook through the OS seam, the fold and the views."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.core.fold import RunFold, mem_value
from orchestrator.core.meminfo import gpu_reading, oom_kill_count
from orchestrator.core.runbook import RunbookError, load_runbook, parse_runbook
from orchestrator.core.system import System
from orchestrator.views.report.write import write_report
from orchestrator.views.snapshot import Thresholds
from trainer.runtime.device import device_total_memory, memory_readings

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "states"
GB = 1024**3


@pytest.mark.parametrize("name", ["conservative", "aggressive", "demo"])
def test_shipped_runbooks_name_both_ceilings(name: str) -> None:
    mem = load_runbook(ROOT / f"runbooks/{name}.yaml").memory
    assert mem.ceiling_gb > 0 and 0 < mem.device_fraction <= 1
    # an 80 GB card is held to 92% of itself, not to a 32 GB Mac's 28 GB
    assert mem.device_ceiling(80 * GB) == pytest.approx(0.92 * 80 * GB)
    assert mem.device_ceiling(None) is None  # a CPU: no device ceiling


@pytest.mark.parametrize("bad", [0, 1.5])
def test_a_device_fraction_outside_0_1_is_refused_naming_the_key(bad: float) -> None:
    raw = {"name": "x", "memory": {"device_fraction": bad}}
    with pytest.raises(RunbookError, match=r"x.yaml.*\n.*memory.device_fraction"):
        parse_runbook(raw, "x.yaml")


def test_nvml_whole_card_usage_is_flagged() -> None:
    # (tree's usage, tree seen, card used, card total) per GPU
    assert gpu_reading([(5 * GB, True, 9 * GB, 80 * GB), (0, False, 70 * GB, 80 * GB)]) == (
        5 * GB,
        80 * GB,
        False,
    )
    # a container: NVML lists the host's pids, none of the tree's → the fullest card, flagged
    assert gpu_reading([(0, False, 9 * GB, 24 * GB), (0, False, 70 * GB, 80 * GB)]) == (
        70 * GB,
        80 * GB,
        True,
    )
    assert gpu_reading([]) is None


def test_oom_kill_counters_are_read_from_memory_events_and_vmstat(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n")
    assert oom_kill_count(str(events)) == 1
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("pgfault 123\noom_kill 7\n")
    assert oom_kill_count(str(vmstat)) == 7
    assert oom_kill_count(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux kernel counter")
def test_the_real_seam_reads_a_kernel_oom_kill_count_for_a_live_process() -> None:
    counts = System().oom_kill_counts(os.getpid())
    assert counts and all(isinstance(n, int) and n >= 0 for n in counts.values()), counts
    sample = System().sample(os.getpid())
    assert sample.sys_total and sample.sys_available and sample.sys_total >= sample.sys_available


def test_a_cpu_reports_no_device_total_and_the_fold_never_takes_total_for_a_reading() -> None:
    cpu = torch.device("cpu")
    assert device_total_memory(cpu) is None and "total" not in memory_readings(cpu)
    fold = RunFold()
    mem = {"allocated": 3 * GB, "reserved": 5 * GB, "total": 80 * GB}
    fold.feed(1, [{"type": "heartbeat", "ts": 1.0, "phase": "train", "device_mem": mem}])
    v = fold.view()
    assert mem_value(mem) == 5 * GB and v.device_mem_now == 5 * GB and v.device_total == 80 * GB


def test_thresholds_name_both_ceilings() -> None:
    th = Thresholds(memory_ceiling_gb=28, device_fraction=0.92)
    assert th.ceilings_text(80 * GB) == "host 28 GB · device 73.6 GB (92% of 80.0 GB)"
    assert th.ceilings_text(None) == "host 28 GB · device 92% of its total"


@pytest.mark.slow
def test_the_report_names_both_ceilings_and_whole_card_usage(tmp_path: Path) -> None:
    var = tmp_path / "night-fallbacks"
    shutil.copytree(FIXTURES / "night-fallbacks", var)
    for samples in var.glob("runs/*/attempt-*/samples.jsonl"):
        lines = [json.loads(x) for x in samples.read_text().splitlines() if x.strip()]
        for line in lines:  # in a container: the whole card's usage, flagged
            line.update(gpu_used=40 * GB, gpu_total=80 * GB, gpu_whole_card=True)
        samples.write_text("".join(json.dumps(x) + "\n" for x in lines))
    text = write_report(var).read_text()
    assert "GPU 40.0 GB (whole-card usage" in text
    assert "ceilings: host 28 GB · device 73.6 GB (92% of 80.0 GB)" in text


def _frame(state_dir: Path, width: int = 110, height: int | None = None) -> str:
    from rich.console import Console

    from orchestrator.views.screen.live import render
    from orchestrator.views.snapshot import SnapshotSource

    now_file = state_dir / "NOW"
    now = float(now_file.read_text()) if now_file.exists() else None
    console = Console(record=True, width=width, height=height)
    size = (width, height) if height else None
    console.print(render(SnapshotSource(state_dir).take(now=now), size))
    return console.export_text()


def test_the_screen_holds_device_memory_to_the_device_ceiling(tmp_path: Path) -> None:
    """An MPS worker reporting 20 GB of Metal memory on a 21 GB working set: over the device
    ceiling (19.3 GB), though far under the 28 GB host ceiling it was once compared with."""
    var = tmp_path / "night-running"
    shutil.copytree(FIXTURES / "night-running", var)
    events = var / "runs/conservative/attempt-02/events.jsonl"
    last_ts = json.loads(events.read_text().splitlines()[-2])["ts"]  # the last one is torn
    mem = {"allocated": 15 * GB, "driver": 20 * GB, "total": 21 * GB}
    heartbeat = {"type": "heartbeat", "ts": last_ts + 1, "phase": "train", "device_mem": mem}
    with events.open("a") as fh:
        fh.write("\n" + json.dumps(heartbeat) + "\n")
    text = _frame(var)
    assert "device    20.0 GB (over ceiling)" in text
    assert "ceiling   host 28 GB" in text and "device 19.3 GB (92% of 21.0 GB)" in text
    compact = _frame(var, width=80, height=24)
    assert "/ host ceiling 28 GB · device 20.0 GB / 19.3 GB" in compact
