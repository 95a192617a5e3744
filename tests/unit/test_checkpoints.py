"""Checkpoint files: atomic, verified, pruned, corrupt ones skipped loudly."""

from pathlib import Path

import pytest
import torch

from trainer.checkpoint import store as ck


def save_n(tmp_path: Path, n: int, keep: int = 3) -> ck.CheckpointWriter:
    w = ck.CheckpointWriter(tmp_path / "checkpoints", keep)
    for i in range(1, n + 1):
        w.save({"w": torch.full((4,), float(i)), "step": i * 10}, {"epoch": i, "step": i * 10})
    return w


def test_save_writes_sidecar_and_prunes(tmp_path):
    w = save_n(tmp_path, 5, keep=3)
    names = [p.name for p in ck.list_checkpoints(w.dir)]
    assert names == [
        "ckpt-e0005-s00000050.pt",
        "ckpt-e0004-s00000040.pt",
        "ckpt-e0003-s00000030.pt",
    ]
    meta = ck.read_sidecar(w.dir / names[0])
    assert meta["epoch"] == 5 and meta["step"] == 50 and len(meta["sha256"]) == 64
    assert not list(w.dir.glob(".tmp-*"))


def test_keep_last_k_is_at_least_two(tmp_path):
    w = save_n(tmp_path, 4, keep=1)
    assert len(ck.list_checkpoints(w.dir)) == 2


def test_resolve_auto_takes_newest(tmp_path):
    w = save_n(tmp_path, 3)
    path, state = ck.resolve("auto", w.dir, lambda p, r: pytest.fail(r))
    assert path.name.startswith("ckpt-e0003") and state["step"] == 30


def test_corrupt_newest_falls_back_to_previous_loudly(tmp_path):
    w = save_n(tmp_path, 3)
    newest = ck.list_checkpoints(w.dir)[0]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    rejected = []
    path, state = ck.resolve("auto", w.dir, lambda p, r: rejected.append((p.name, r)))
    assert state["step"] == 20 and path.name.startswith("ckpt-e0002")
    assert rejected and rejected[0][0] == newest.name and "sha256" in rejected[0][1]


def test_explicit_path_falls_back_only_to_older(tmp_path):
    w = save_n(tmp_path, 3)
    middle = w.dir / "ckpt-e0002-s00000020.pt"
    middle.write_bytes(b"garbage")
    _path, state = ck.resolve(str(middle), w.dir, lambda p, r: None)
    assert state["step"] == 10  # never the newer e0003


def test_truncated_file_and_missing_sidecar(tmp_path):
    w = save_n(tmp_path, 2)
    newest = ck.list_checkpoints(w.dir)[0]
    newest.write_bytes(newest.read_bytes()[:100])
    Path(str(ck.list_checkpoints(w.dir)[1]) + ".json").unlink()
    with pytest.raises(ck.NoCheckpointError):
        ck.resolve("auto", w.dir, lambda p, r: None)


def test_no_checkpoint_is_an_error_not_a_restart(tmp_path):
    with pytest.raises(ck.NoCheckpointError):
        ck.resolve("auto", tmp_path / "checkpoints", lambda p, r: None)


def test_best_copy_verifies(tmp_path):
    w = save_n(tmp_path, 2)
    best = w.mark_best(ck.list_checkpoints(w.dir)[0], "knn", 0.5)
    assert ck.load(best)["step"] == 20
    assert ck.read_sidecar(best)["metric"] == "knn"


def test_load_refuses_arbitrary_pickles(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    w = save_n(tmp_path, 1)
    p = ck.list_checkpoints(w.dir)[0]
    p.write_bytes(pickle.dumps(Evil()))
    meta = ck.read_sidecar(p)
    meta.update(bytes=p.stat().st_size, sha256=ck._sha256(p))
    Path(str(p) + ".json").write_text(__import__("json").dumps(meta))
    with pytest.raises(ck.CorruptCheckpointError):
        ck.load(p)
