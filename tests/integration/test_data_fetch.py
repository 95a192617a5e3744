"""Datasets fetched before a plan is accepted: torchvision-format archives served over HTTP on
127.0.0.1 (the ``HJEPA_DATA_MIRROR`` seam), downloaded with a progress bar by ``start``'s
check, a night whose data cannot be had refused, and a fallback said out loud."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml

from tests.helpers.fake_datasets import write_cifar10, write_stl10
from tests.workerutil import DEMO, DEMO_AGGRESSIVE, ROOT, TINY, env
from trainer.data import fetch as F


def _archive(src: Path, folder: str, dest: Path) -> str:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src / folder, arcname=folder)
    return hashlib.md5(dest.read_bytes()).hexdigest()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A local HTTP server holding cifar-10-python.tar.gz and stl10_binary.tar.gz; yields the
    environment that points the fetcher at it."""
    stage, served = tmp_path / "stage", tmp_path / "served"
    served.mkdir()
    write_cifar10(stage, n_train=50, n_test=20)
    write_stl10(stage, n_train=20, n_test=10, n_unlabeled=30)
    md5 = {
        "cifar10": _archive(stage, "cifar-10-batches-py", served / "cifar-10-python.tar.gz"),
        "stl10": _archive(stage, "stl10_binary", served / "stl10_binary.tar.gz"),
    }
    handler = partial(_Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {
            F.MIRROR_ENV: f"http://127.0.0.1:{server.server_address[1]}/",
            F.MD5_ENV: ",".join(f"{k}={v}" for k, v in md5.items()),
        }
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_downloads_checks_extracts_and_says_where(
    tmp_path: Path, mirror: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in mirror.items():
        monkeypatch.setenv(k, v)
    out = io.StringIO()
    got = F.fetch("cifar10", tmp_path / "data", out=out)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    assert got.folder == str(folder.resolve()) and got.url.startswith(mirror[F.MIRROR_ENV])
    assert sorted(p.name for p in folder.iterdir())[:2] == ["batches.meta", "data_batch_1"]
    assert list((tmp_path / "data").iterdir()) == [folder]  # archive and .part removed
    text = out.getvalue()
    assert "100%" in text and f"downloaded {F.human(got.nbytes)} into {folder.resolve()}" in text
    # a wrong checksum keeps nothing and says which setting a re-packing mirror needs
    monkeypatch.setenv(F.MD5_ENV, "stl10=" + "0" * 32)
    with pytest.raises(F.FetchError, match=F.MD5_ENV):
        F.fetch("stl10", tmp_path / "other", out=io.StringIO())
    assert list((tmp_path / "other").iterdir()) == []


def test_production_sources_are_torchvisions(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision import datasets as tvd

    src = F.source("stl10", env={})
    assert (src.url, src.md5) == (tvd.STL10.url, tvd.STL10.tgz_md5)
    with pytest.raises(F.FetchError, match="not downloadable"):
        F.source("imagenet100", env={})


def _plan(tmp_path: Path, start: str, only: int | None = None) -> Path:
    fetchable = [
        {"name": "cifar10", "path": "./data", "download": True},
        {"name": "stl10", "path": "./data", "download": True},
    ]
    tiny = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in TINY)}
    plan = {
        "name": "fetchtest",
        "report_at": None,
        "nights": [
            {"name": "one", "config": str(DEMO), "runbook": str(ROOT / "runbooks/demo.yaml"),
             "start": start, "window": "1h", "overrides": {**tiny, "data.datasets": fetchable}},
            {"name": "two", "config": str(DEMO_AGGRESSIVE), "start": start, "window": "1h",
             "runbook": str(ROOT / "runbooks/aggressive.yaml"),
             "overrides": {**tiny, "data.datasets": [{"name": "imagenet100",
                                                      "path": "./data/imagenet"}]}},
        ],
    }  # fmt: skip
    if only is not None:
        plan["nights"] = [plan["nights"][only]]  # type: ignore[index]
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def cli(*args: str, cwd: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "orchestrator.cli", *args]
    return subprocess.run(
        cmd, cwd=cwd, env={**env(), **extra}, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_start_downloads_then_accepts_and_says_what_night_two_trains_on(
    tmp_path: Path, mirror: dict[str, str]
) -> None:
    from datetime import datetime, timedelta

    later = (datetime.now() + timedelta(hours=12)).strftime("%H:%M")  # nothing starts in the test
    plan = _plan(tmp_path, later)
    r = cli("start", "--plan", str(plan), "--state-dir", "var", cwd=tmp_path, extra=mirror)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        err = r.stderr
        data = (tmp_path / "data").resolve()
        assert f"into {data / 'cifar-10-batches-py'}" in err and "100%" in err
        assert f"into {data / 'stl10_binary'}" in err
        assert "night 1 one: ready (cifar10+stl10 on cpu)" in err
        assert "night 2 two: imagenet100 missing, so this night will train on cifar10+stl10" in err
        assert "hjepa-night data imagenet100 --from" in err
        assert "daemon started" in r.stdout
    finally:
        cli("stop", "--state-dir", "var", cwd=tmp_path, extra={})
    assert (tmp_path / "data" / "stl10_binary" / "unlabeled_X.bin").is_file()


@pytest.mark.slow
def test_start_refuses_when_data_cannot_be_had_and_no_daemon_starts(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "22:00", only=1)
    closed = {F.MIRROR_ENV: "http://127.0.0.1:9/"}  # discard port: connection refused
    r = cli("start", "--plan", str(plan), "--state-dir", "var", cwd=tmp_path, extra=closed)
    assert r.returncode == 2, r.stdout + r.stderr
    # ImageNet-100 is missing and its fallback (CIFAR-10 + STL-10) cannot be downloaded
    refusal = r.stderr.split("hjepa-night: the plan cannot start: ")[1]
    assert refusal.startswith("night 1 two: imagenet100: not found at")
    assert "hjepa-night data imagenet100 --from DIR" in refusal
    assert "its dataset fallback cannot run either: cifar10: download from http://127.0.0.1:9/" in (
        refusal
    )
    assert not (tmp_path / "var" / "state.json").exists()
