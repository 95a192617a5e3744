"""A night on a filesystem too small for its checkpoints (a tmpfs the test mounts; root only).

The first attempt fills the disk on its fourth checkpoint (keep_last_k 3 + the one being
written do not fit): the worker exits ``disk`` (not ``crash``), the night runner frees the
checkpoints beyond the newest two good ones, records what it freed, and retries once from the
newest good checkpoint with ``keep_last_k`` 2. Each attempt writes into its own folder, so the
retry needs the resumed checkpoints plus its own: on this disk it fills it again, and the
night ends "disk full: N MB free at PATH", its last good checkpoint kept and evaluated. Never a
restart from step 0, never a crash loop.
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

from tests.workerutil import DEMO, ROOT, TINY, env

SIZE = "5M"  # the tiny model's checkpoint is ~1.4 MB: 3 fit, 4 do not


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mnt = tmp_path / "small"
    mnt.mkdir()
    got = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mnt)],
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
    "checkpoint.every_n_steps=2",
    "checkpoint.keep_last_k=3",
]


@pytest.mark.slow
def test_a_full_disk_frees_old_checkpoints_retries_once_and_finishes(small_disk: Path) -> None:
    # the state dir on the ordinary disk (start/run check its free space before the night), the
    # runs (checkpoints) on the small one: the volume the night writes to fills up mid-night
    state_dir = small_disk.parent / "var"
    state_dir.mkdir()
    (state_dir / "runs").symlink_to(small_disk, target_is_directory=True)
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", "--config", str(DEMO)]
    cmd += ["--window", "20m", "--state-dir", str(state_dir), "--no-tui"]
    for s in SETS:
        cmd += ["--set", s]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=400)
    took = time.monotonic() - t0
    state = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    night = state["nights"][0]
    timeline = [(d["kind"], d["trigger"], d["action"]) for d in night["decisions"]]
    print(f"disk-full night in {took:.0f} s: {night['status']} — {night['reason']}")
    for row in timeline:
        print("  ", *row)
    assert "Traceback" not in out.stdout, out.stdout[-2000:]
    kinds = [a["exit_kind"] for a in night["attempts"]]
    assert kinds[0] == "disk", (kinds, out.stdout[-2000:], out.stderr[-2000:])
    assert "crash" not in kinds
    first = night["attempts"][0]
    assert first["message"].startswith("disk full: ") and "MB free at" in first["message"]
    # the runner freed old checkpoints before the one retry, and said what it freed
    freed = [d for d in night["decisions"] if d["kind"] == "freed"]
    assert len(freed) == 1 and freed[0]["evidence"]["files"], timeline
    assert [f["trigger"] for f in night["fallbacks"]] == ["disk"]
    # the retry resumed from the newest good checkpoint with two kept, never from step 0
    second = night["attempts"][1]
    assert second["resume_from"] and Path(second["resume_from"]).name.startswith("ckpt-")
    assert second["overrides"]["checkpoint.keep_last_k"] == 2
    # one retry only: it finishes, or the night ends saying the disk is full — and keeps its
    # last good checkpoint (evaluated for the report), never a crash loop
    assert len(night["attempts"]) == 2, kinds
    assert kinds[-1] in ("finished", "disk"), kinds
    if kinds[-1] == "disk":
        assert night["reason"].startswith("disk full: "), night["reason"]
        assert "again after freeing old checkpoints" in night["reason"]
    assert night["status"] in ("succeeded", "partial"), night["reason"]
    assert night["best_checkpoint"] and Path(night["best_checkpoint"]).is_file()
