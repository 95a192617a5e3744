"""The worker-tree memory measure on real processes: a memory-mapped file read by a parent and
its child (an STL-10 memmap read by loader workers, in small) counts about once in the tree
measure (PSS on Linux, USS on macOS), twice in the plain RSS sum."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.core.system import System

pytestmark = pytest.mark.slow  # real processes


MB = 1024**2
SIZE = 192 * MB

# Map the file, touch every page, start a child that does the same, say "ready", then sleep.
TREE = r"""
import mmap, subprocess, sys, time
path, ready, role = sys.argv[1], sys.argv[2], sys.argv[3]
with open(path, "rb") as fh:
    m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    total = sum(m[i] for i in range(0, len(m), 4096))
if role == "parent":
    child = subprocess.Popen([sys.executable, "-c", sys.argv[4], path, ready + ".child",
                              "child", sys.argv[4]])
    while True:
        try:
            if open(ready + ".child").read() == "ok":
                break
        except OSError:
            pass
        time.sleep(0.05)
open(ready, "w").write("ok")
time.sleep(120)
"""


def test_a_shared_memory_mapped_file_counts_once_in_the_tree_measure(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    with data.open("wb") as fh:
        chunk = bytes(range(256)) * (MB // 256)
        for _ in range(SIZE // MB):
            fh.write(chunk)
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", TREE, str(data), str(ready), "parent", TREE], start_new_session=True
    )
    try:
        end = time.monotonic() + 120
        while not (ready.exists() and ready.read_text() == "ok"):
            assert proc.poll() is None and time.monotonic() < end, "the tree never got ready"
            time.sleep(0.1)
        system = System()
        s = system.sample(proc.pid)
        assert s.tree_rss is not None and s.tree_mem is not None
        shared_rss = s.tree_rss  # both processes' RSS include the whole mapped file
        assert shared_rss > 2 * SIZE * 0.9, s
        if s.tree_measure == "pss":  # each process is charged half of every shared page
            assert s.tree_mem < SIZE * 1.35 + 2 * 40 * MB, s  # + two interpreters' own pages
            assert s.tree_mem > SIZE * 0.9, s
        elif s.tree_measure == "uss":  # shared pages belong to nobody's private set
            assert s.tree_mem < SIZE * 0.5 + 2 * 40 * MB, s
        else:
            raise AssertionError(f"{sys.platform} should give PSS or USS, got {s.tree_measure}")
        assert shared_rss - s.tree_mem > SIZE * 0.5  # the double count is gone
        # between full readings the measure follows RSS changes from the last full one
        again = system.sample(proc.pid)
        assert again.tree_measure == s.tree_measure
        assert abs(again.tree_mem - s.tree_mem) < 16 * MB  # type: ignore[operator]
    finally:
        System().signal_group(proc.pid, 9)  # both processes (the child is in its group)
        proc.kill()
        proc.wait()
