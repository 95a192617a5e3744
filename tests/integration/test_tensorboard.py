"""``logging.use_tensorboard: true``: the real worker writes upstream's tags into the night's
tensorboard/ folder, and an attempt rolled back to an earlier checkpoint continues the same
curve at the right step (the points it abandons are purged)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.workerutil import DEMO, TINY, env, worker_cmd
from trainer.events_read import read_events

pytestmark = pytest.mark.slow
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="the tensorboard extra"
)


def attempt(run_dir: Path, *extra: str) -> None:
    sets = [*TINY, "logging.use_tensorboard=true", "evaluation.eval_frequency=1"]
    r = subprocess.run(worker_cmd(DEMO, run_dir, sets, *extra), capture_output=True, text=True,
                       env=env(), timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]


def test_tags_and_a_rolled_back_attempt_continue_one_curve(tmp_path: Path) -> None:
    night = tmp_path / "runs" / "n1-demo"
    attempt(night / "attempt-01")  # 2 epochs of 16 steps
    first = sorted((night / "attempt-01" / "checkpoints").glob("ckpt-e0001-*.pt"))
    assert first, list((night / "attempt-01").rglob("*.pt"))
    attempt(night / "attempt-02", "--resume", str(first[0]))  # epoch 2 again, from step 16
    acc = event_accumulator.EventAccumulator(
        str(night / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}
    )
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = {"train/loss", "train/loss_level_0", "train/loss_level_1", "train/loss_level_2",
            "train/grad_norm", "train/lr", "train/ema_momentum", "train/img_per_s",
            "eval/knn_accuracy", "eval/linear_probe", "eval/feature_std",
            "eval/effective_rank"}  # fmt: skip
    assert want <= tags, sorted(tags)
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, 33)), steps
    # after step 16 the curve is the second attempt's (the first one's points were purged)
    second = {e["step"]: e["loss"] for e in read_events(night / "attempt-02" / "events.jsonl")
              if e["type"] == "step"}  # fmt: skip
    assert sorted(second) == list(range(17, 33))
    shown = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert all(shown[k] == pytest.approx(v, rel=1e-6) for k, v in second.items())
    assert [e.step for e in acc.Scalars("train/lr")] == steps
    texts = acc.Tensors("attempts/text_summary")  # how each attempt started
    assert len(texts) == 2 and b"resumed from" in texts[-1].tensor_proto.string_val[0]
