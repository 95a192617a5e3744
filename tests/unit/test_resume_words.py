"""A failed ``--resume`` says why in words (not found, no sidecar), with no traceback; falling
back to an older checkpoint than the one asked for is said on the console."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.workerutil import TINY, run_worker
from trainer.checkpoint.store import CheckpointWriter, NoCheckpointError, resolve


def _two(tmp_path: Path) -> tuple[Path, Path]:
    w = CheckpointWriter(tmp_path, keep_last_k=3)
    a = w.save({"x": torch.zeros(2)}, {"epoch": 1, "step": 10}).path
    b = w.save({"x": torch.ones(2)}, {"epoch": 2, "step": 20}).path
    return a, b


def test_missing_path_says_not_found(tmp_path: Path) -> None:
    with pytest.raises(NoCheckpointError, match="not found"):
        resolve(str(tmp_path / "nowhere" / "ckpt-e0001-s00000001.pt"), tmp_path, print)


def test_no_sidecar_is_said_and_the_older_one_is_used(tmp_path: Path) -> None:
    a, b = _two(tmp_path)
    Path(str(b) + ".json").unlink()
    rejected: list[tuple[str, str]] = []
    path, state = resolve(str(b), tmp_path, lambda p, why: rejected.append((p.name, why)))
    assert path == a and state["x"].sum() == 0
    assert rejected and rejected[0][0] == b.name and "no sidecar" in rejected[0][1]
    Path(str(a) + ".json").unlink()
    with pytest.raises(NoCheckpointError, match="no sidecar") as err:
        resolve(str(b), tmp_path, lambda p, why: None)
    assert "corrupt" not in str(err.value)


@pytest.mark.slow
def test_a_failed_resume_is_one_line_without_traceback(tmp_path: Path) -> None:
    got = run_worker(tmp_path / "run", TINY, "--resume", str(tmp_path / "missing.pt"))
    assert got.returncode == 15
    assert "Traceback" not in got.stderr, got.stderr[-2000:]
    assert "fatal (resume)" in got.stderr and "not found" in got.stderr
