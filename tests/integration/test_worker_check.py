"""The real worker's ``--check`` mode as a subprocess, and preflight reading it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.preflight.checks import check_dataset, check_device, worker_facts
from tests.workerutil import DEMO, ROOT, TINY, env
from trainer.events import EXIT_USAGE

pytestmark = pytest.mark.slow


def check(config: Path, sets: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "trainer", "--check", "--config", str(config)]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env(), timeout=300)


def document(r: subprocess.CompletedProcess[str]) -> dict:
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, r.stdout + r.stderr  # one JSON document, nothing else
    return json.loads(lines[0])


def test_check_reports_device_and_datasets_without_a_run_dir(tmp_path: Path) -> None:
    r = check(DEMO, [*TINY, "device=auto"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = document(r)
    assert doc["ok"] is True and doc["config"] == str(DEMO) and len(doc["config_hash"]) == 16
    dev = doc["device"]
    assert dev["requested"] == "auto" and dev["error"] is None
    assert dev["type"] in ("cpu", "cuda", "mps") and dev["device"].startswith(dev["type"])
    if dev["type"] == "cuda":
        assert dev["name"] and dev["memory_bytes"] > 0
    else:
        assert dev["memory_bytes"] is None
    [ds] = doc["datasets"]
    assert ds["key"] == "synthetic" and ds["status"] == "ok" and ds["message"] is None
    assert ds["description"].endswith("(256 train)")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_missing_dataset_gives_its_path_and_how_to_fetch_it(tmp_path: Path) -> None:
    sets = [*TINY, f"data.datasets=[{{name: synthetic}}, {{name: cifar10, path: {tmp_path}}}]"]
    r = check(DEMO, sets, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    doc = document(r)
    assert doc["ok"] is False
    ok, missing = doc["datasets"]
    assert ok["status"] == "ok"
    assert missing["status"] == "missing" and missing["name"] == "cifar10"
    assert missing["path"] == str(tmp_path / "cifar-10-batches-py")
    assert "download: true" in missing["message"] and "data_batch_1" in missing["message"]
    # preflight shows it as before: the first line, then the expected path and the fix
    facts = worker_facts(str(DEMO), sets)
    assert facts["datasets"] == doc["datasets"]
    c = check_dataset(facts)
    assert c.result == "fail" and c.detail.startswith("cifar10: not found at")
    assert c.fix.startswith(f"cifar10 expected at {tmp_path / 'cifar-10-batches-py'}: ")
    assert "download: true" in c.fix
    assert check_device(facts, "cpu").result == "pass"


def test_relative_dataset_paths_resolve_from_the_working_directory(tmp_path: Path) -> None:
    sets = [*TINY, "data.datasets=[{name: cifar10, path: ./here}]"]
    doc = document(check(DEMO, sets, cwd=tmp_path))
    assert doc["datasets"][0]["path"] == "here/cifar-10-batches-py"
    assert "not found at here/cifar-10-batches-py" in doc["datasets"][0]["message"]


def test_config_typo_names_the_key_and_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text(DEMO.read_text() + "\nloggin:\n  log_frequency: 5\n")
    r = check(bad, [], cwd=ROOT)
    assert r.returncode == EXIT_USAGE
    doc = document(r)
    assert doc["ok"] is False and doc["config"] == str(bad)
    assert str(bad) in doc["error"] and "loggin: unknown key" in doc["error"]
    assert "loggin: unknown key" in r.stderr
    r = check(DEMO, ["training.lrr=1e-4"], cwd=ROOT)
    assert r.returncode == EXIT_USAGE
    err = document(r)["error"]
    assert str(DEMO) in err and "training.lrr: unknown key" in err


def test_unavailable_device_is_reported_not_fatal(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    r = check(DEMO, [*TINY, "device=cuda"], cwd=tmp_path)
    assert r.returncode == 1
    dev = document(r)["device"]
    assert dev["device"] is None and "cuda requested but not available" in dev["error"]
    assert document(r)["datasets"][0]["status"] == "ok"


def test_run_dir_is_still_required_outside_check(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "trainer", "--config", str(DEMO)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=120)
    assert r.returncode == 2 and "required: --run-dir" in r.stderr
