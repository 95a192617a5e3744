"""A full disk is its own kind: the worker's exit 16 (or a crash whose log says "No space left
on device") retries once from the last good checkpoint after freeing old ones, then ends the
night saying how much is free; restarts without a checkpoint say they start from step 0."""

from __future__ import annotations

import errno
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.policy import DecisionKind as K
from orchestrator.policy import classify_exit, decide
from tests.unit.test_policy import CONS, DEADLINE, NOW, ended, hist
from trainer.checkpoint.store import DiskFullError, as_disk_full
from trainer.events import EXIT_CODE_OF_KIND, EXIT_CRASH, FATAL_KINDS, KIND_OF_EXIT_CODE


def test_disk_is_a_fatal_kind_with_its_own_exit_code() -> None:
    assert "disk" in FATAL_KINDS
    code = EXIT_CODE_OF_KIND["disk"]
    assert KIND_OF_EXIT_CODE[code] == "disk"
    assert len(set(EXIT_CODE_OF_KIND.values())) == len(EXIT_CODE_OF_KIND)
    msg = "disk full: 3 MB free at /x"
    assert classify_exit(code, {"kind": "disk", "message": msg}) == ("disk", msg)


def test_a_crash_whose_log_says_no_space_is_a_full_disk() -> None:
    tail = "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0\n"
    assert classify_exit(EXIT_CRASH, None, tail)[0] == "crash"
    tail += "OSError: [Errno 28] No space left on device\n"
    assert classify_exit(EXIT_CRASH, None, tail)[0] == "disk"


def test_torch_write_failure_on_a_full_directory_becomes_disk_full(tmp_path: Path) -> None:
    enospc = OSError(errno.ENOSPC, "No space left on device")
    full = as_disk_full(enospc, tmp_path, 10)
    assert isinstance(full, DiskFullError)
    assert str(full).startswith("disk full: ") and f"MB free at {tmp_path}" in str(full)
    torch_err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 6 vs 0")
    # plenty of room: a torch write failure that is not a full disk stays what it was
    assert as_disk_full(torch_err, tmp_path, 10) is None
    assert isinstance(as_disk_full(torch_err, tmp_path, 2**62), DiskFullError)
    assert as_disk_full(ValueError("unexpected pos"), tmp_path, 2**62) is None


def test_disk_full_retries_once_freeing_old_checkpoints_then_ends() -> None:
    obs = ended("disk", message="disk full: 3 MB free at /v/runs", exit_code=16)
    first = decide(obs, hist(), CONS, NOW, DEADLINE)
    assert (first.kind, first.trigger, first.ladder) == (K.RESTART, "disk", "disk")
    assert first.resume_from is not None  # the newest good checkpoint, never step 0
    assert first.overrides == {"checkpoint.keep_last_k": 2}
    assert "disk full: 3 MB free at /v/runs" in first.action and "free" in first.action
    again = decide(obs, hist(rungs_used={"disk": 1}), CONS, NOW, DEADLINE)
    assert (again.kind, again.trigger) == (K.END_NIGHT, "disk")
    assert again.reason.startswith("disk full: 3 MB free at /v/runs")
    # without a message (the disk was too full for the fatal event), still said plainly
    bare = decide(replace(obs, message=None), hist(), CONS, NOW, DEADLINE)
    assert "disk full (exit 16)" in bare.action


@pytest.mark.parametrize(
    ("obs", "trigger"),
    [
        (ended("feature", fatal_feature="flash_attention"), "feature"),
        (ended("oom"), "oom"),
        (ended("crash", message="boom"), "crash"),
        (ended("disk", message="disk full: 1 MB free at /v"), "disk"),
    ],
)
def test_a_restart_before_the_first_checkpoint_says_step_0(obs, trigger: str) -> None:
    d = decide(obs, hist(checkpoints=()), CONS, NOW, DEADLINE)
    assert (d.kind, d.trigger, d.resume_from) == (K.RESTART, trigger, None)
    assert "restart from step 0 (no checkpoint yet)" in d.action
    assert not d.action.endswith("; resume")
    with_ckpt = decide(obs, hist(), CONS, NOW, DEADLINE)
    assert "step 0" not in with_ckpt.action and with_ckpt.resume_from
