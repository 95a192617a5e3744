"""Preflight's device and dataset checks over the worker's ``--check`` document, and the
boundary: the preflight modules import no torch and nothing from the worker but its contracts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.preflight import checks as pc
from orchestrator.preflight.checks import GB, check_dataset, check_device, worker_facts


def device(**kw) -> dict:
    base = {"requested": "auto", "device": "cpu", "type": "cpu", "name": "x86_64",
            "memory_bytes": None, "error": None}  # fmt: skip
    return {"ok": True, "device": base | kw, "datasets": []}


def test_device_lines() -> None:
    cuda = device(device="cuda", type="cuda", name="NVIDIA H200", memory_bytes=140 * GB)
    c = check_device(cuda, "auto")
    assert (c.result, c.detail) == ("pass", "device: auto -> cuda (NVIDIA H200, 140 GB)")
    c = check_device(device(), "auto")
    assert (c.result, c.detail, c.fix) == (
        "warn", "device: auto -> cpu (no CUDA or MPS found)", "expect CPU speed")  # fmt: skip
    assert check_device(device(requested="cpu"), "cpu").result == "pass"
    why = "device: mps requested but not available (torch 2.14, built without MPS)"
    c = check_device(device(device=None, type=None, error=why), "mps")
    assert (c.result, c.detail) == ("fail", why) and "install a matching torch" in c.fix
    c = check_device({"ok": False, "error": "cfg.yaml: invalid configuration\n  x: bad"}, "auto")
    assert (c.result, c.detail) == ("fail", "x: bad")


def test_dataset_lines() -> None:
    ok = {"key": "cifar10", "name": "cifar10", "path": "./data", "status": "ok",
          "description": "data/cifar-10-batches-py (50000 train)", "message": None}  # fmt: skip
    synth = ok | {"key": "synthetic", "name": "synthetic", "description": "synthetic (64 train)"}
    c = check_dataset({"datasets": [ok, synth]})
    assert (c.result, c.detail) == (
        "pass",
        "cifar10: data/cifar-10-batches-py (50000 train); synthetic: synthetic (64 train)",
    )
    missing = ok | {
        "key": "stl10",
        "name": "stl10",
        "path": "data/stl10_binary",
        "status": "missing",
        "description": None,
        "message": "stl10: not found at data/stl10_binary — set download: true",
    }
    c = check_dataset({"datasets": [ok, missing, missing | {"name": "later"}]})
    assert c.result == "fail" and c.detail == missing["message"]
    assert c.fix == f"stl10 expected at data/stl10_binary: {missing['message']}"
    broken = ok | {"status": "error", "message": "OSError: permission denied"}
    c = check_dataset({"datasets": [broken]})
    assert (c.result, c.detail, c.fix) == ("fail", "OSError: permission denied",
                                           "check data.* paths")  # fmt: skip
    c = check_dataset({"ok": False, "error": "python -m trainer --check exited 14: boom"})
    assert c.result == "fail" and "exited 14" in c.detail


def test_worker_facts_without_a_document(monkeypatch) -> None:
    def fake(config, overrides, mode, cwd):
        assert mode == ["--check"] and overrides == ["device=cpu"]
        return subprocess.CompletedProcess([], 14, stdout="noise\n", stderr="a\nb\nTraceback: x\n")

    monkeypatch.setattr(pc, "run_worker", fake)
    facts = worker_facts("configs/demo_conservative.yaml", ["device=cpu"])
    assert facts["ok"] is False and facts["error"].endswith("exited 14: a | b | Traceback: x")
    assert check_device(facts, "cpu").result == check_dataset(facts).result == "fail"


@pytest.mark.slow
def test_preflight_imports_only_the_worker_contracts() -> None:
    code = (
        "import sys, orchestrator.preflight.command, orchestrator.preflight.checks\n"
        "import orchestrator.policy\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] in ('trainer', 'torch'))\n"
        "print(' '.join(mods))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    mods = out.stdout.split()
    assert "torch" not in mods
    assert {m for m in mods if m not in ("trainer", "trainer.events", "trainer.events_read")} <= {
        m for m in mods if m == "trainer.config" or m.startswith("trainer.config.")
    }


def test_device_line_lists_the_ranks_and_their_devices() -> None:
    ranks = {
        "nproc_per_node": 2,
        "nnodes": 1,
        "world_size": 2,
        "devices": ["cuda:0", "cuda:1"],
        "cuda_devices": 2,
        "error": None,
    }
    c = check_device(device(device="cuda", type="cuda", name="NVIDIA H200",
                            memory_bytes=140 * GB, ranks=ranks), "auto")  # fmt: skip
    assert c.result == "pass"
    assert c.detail.endswith("2 process(es) here on cuda:0, cuda:1, world size 2 (1 node(s))")


@pytest.mark.slow
def test_worker_check_reports_the_ranks_of_the_config() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "--check", "--config", "configs/demo_conservative.yaml",
         "--set", "distributed.nproc_per_node=2", "--set", "device=cpu"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc["ok"] and doc["device"]["ranks"]["world_size"] == 2
    assert doc["device"]["ranks"]["devices"] == ["cpu", "cpu"]
