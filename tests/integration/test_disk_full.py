"""A night on a filesystem too small for its checkpoints (a tmpfs the test mounts; root only).

The volume is sized in checkpoints (measured from a short run of the same config), so each case
has one outcome. The first attempt fills the disk on the checkpoint after its ``keep_last_k``
kept ones: the worker exits ``disk`` (not ``crash``), the night runner frees the checkpoints
beyond the newest two good ones, records what it freed, and retries once from the newest good
checkpoint with ``keep_last_k`` 2. Each attempt writes into its own folder, so the retry needs
the two resumed checkpoints plus its own two and the one being written (five):

- 3.5 checkpoints, ``keep_last_k`` 3: the first attempt fails writing its 4th, the retry fills
  the disk again with its 2nd; the night ends ``partial``, "disk full: N MB free at PATH",
  its last good checkpoint kept and evaluated;
- 5.5 checkpoints, ``keep_last_k`` 5: the first attempt fails writing its 6th, the retry fits
  and trains to the end; the night ends ``succeeded``.

Never a restart from step 0, never a crash loop.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workerutil import DEMO, ROOT, TINY, env, repair_runbook, run_worker, session_once
from trainer.checkpoint.store import list_checkpoints, read_sidecar


def _need_root_and_tmpfs() -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")


@pytest.fixture(scope="session")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> int:
    """The size of one checkpoint of the night's config, from a short run on the ordinary disk
    (the model, its EMA target and the optimizer's moments: the same at every step); measured
    once per session, the test processes sharing it through a locked file."""
    _need_root_and_tmpfs()
    with session_once(tmp_path_factory, "disk-full-checkpoint-bytes.txt") as record:
        if not record.exists():
            run_dir = tmp_path_factory.mktemp("measure") / "run"
            out = run_worker(run_dir, [*SETS, "training.epochs=1", "data.synthetic.num_train=32"])
            assert out.returncode == 0, out.stderr[-3000:]
            sidecar = read_sidecar(list_checkpoints(run_dir / "checkpoints")[0])
            assert sidecar is not None
            record.write_text(str(sidecar["bytes"]))
        return int(record.read_text())


@pytest.fixture
def small_disk(
    request: pytest.FixtureRequest, tmp_path: Path, checkpoint_bytes: int
) -> Iterator[Path]:
    """A tmpfs of ``request.param`` checkpoints (a half one spare for the logs and events)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    size_k = int(request.param * checkpoint_bytes) // 1024
    got = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {got.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


SETS = [
    *TINY,
    "data.synthetic.num_train=64",
    "data.synthetic.num_eval_train=64",
    "data.synthetic.num_eval_test=64",
    "training.epochs=4",
    "evaluation.eval_at_start=false",
    "evaluation.eval_frequency=100",
    "evaluation.max_train_samples=64",
    "evaluation.max_test_samples=64",
    "evaluation.rank_samples=64",
    "evaluation.linear_probe.max_iter=20",
    "checkpoint.every_n_steps=2",  # 4 steps an epoch, 16 in all: 8 checkpoints
]


# volume in checkpoints, the first attempt's keep_last_k, the checkpoint the retry resumes from
# (the one before the write that did not fit: the 4th, step 8; the 6th, step 12), how the retry
# ends, the night's status
FILLS_AGAIN = (3.5, 3, "ckpt-e0002-s00000006.pt", "disk", "partial")
FITS = (5.5, 5, "ckpt-e0003-s00000010.pt", "finished", "succeeded")


def run_night(small_disk: Path, keep: int) -> tuple[dict, subprocess.CompletedProcess]:
    # the state dir on the ordinary disk (start/run check its free space before the night), the
    # runs (checkpoints) on the small one: the volume the night writes to fills up mid-night
    state_dir = small_disk.parent / "var"
    state_dir.mkdir()
    (state_dir / "runs").symlink_to(small_disk, target_is_directory=True)
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", "--config", str(DEMO)]
    cmd += ["--runbook", repair_runbook(small_disk.parent)]
    cmd += ["--window", "20m", "--state-dir", str(state_dir), "--no-tui"]
    for s in [*SETS, f"checkpoint.keep_last_k={keep}"]:
        cmd += ["--set", s]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=400)
    took = time.monotonic() - t0
    night = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))["nights"][0]
    print(f"disk-full night in {took:.0f} s: {night['status']} — {night['reason']}")
    for d in night["decisions"]:
        print("  ", d["kind"], d["trigger"], d["action"])
    assert "Traceback" not in out.stdout, out.stdout[-2000:]
    return night, out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("small_disk", "keep", "resumed", "retry_ends", "status"), [FILLS_AGAIN, FITS],
    indirect=["small_disk"], ids=["retry-fills-it-again", "retry-fits"],
)  # fmt: skip
def test_a_full_disk_frees_old_checkpoints_and_retries_once(
    small_disk: Path, keep: int, resumed: str, retry_ends: str, status: str
) -> None:
    night, out = run_night(small_disk, keep)
    kinds = [a["exit_kind"] for a in night["attempts"]]
    assert kinds[0] == "disk", (kinds, out.stdout[-2000:], out.stderr[-2000:])
    first = night["attempts"][0]
    assert first["message"].startswith("disk full: ") and "MB free at" in first["message"]
    # the runner freed old checkpoints before the one retry, and said what it freed
    freed = [d for d in night["decisions"] if d["kind"] == "freed"]
    assert len(freed) == 1 and freed[0]["evidence"]["files"], night["decisions"]
    assert [f["trigger"] for f in night["fallbacks"]] == ["disk"]
    # the retry resumed from the newest good checkpoint with two kept, never from step 0
    second = night["attempts"][1]
    assert Path(second["resume_from"]).name == resumed, second["resume_from"]
    assert second["overrides"]["checkpoint.keep_last_k"] == 2
    # one retry only, never a crash loop; the night keeps a good checkpoint for the report
    assert len(night["attempts"]) == 2, kinds
    assert night["best_checkpoint"] and Path(night["best_checkpoint"]).is_file()
    assert kinds[1] == retry_ends, (kinds, night["reason"])
    if retry_ends == "disk":  # the night ends saying so, its last good checkpoint evaluated
        assert night["reason"].startswith("disk full: "), night["reason"]
        assert "again after freeing old checkpoints" in night["reason"]
    assert night["status"] == status, night["reason"]
