"""TensorBoard curves from the worker's own events (``logging.use_tensorboard: true``).

    sink = TensorBoardSink(tensorboard_dir(run_dir))   # the emitter calls sink(event)

Nothing is measured twice: every scalar is a field of an event the worker already emits, so
TensorBoard and ``events.jsonl`` always agree. Tags (upstream's guide names the first ones):

- ``step``: ``train/loss``, ``train/loss_level_0..N``, ``train/<part>`` for each loss part
  (VICReg, contrastive), ``train/grad_norm``, ``train/lr``, ``train/ema_momentum``,
  ``train/img_per_s``, ``train/step_s``, ``train/micro_batch``, ``memory/<key>_gb`` for the
  device memory readings (not the device's total).
- ``eval``: ``eval/knn_accuracy`` (k = 20, upstream's tag) and ``eval/knn_<k>`` for every k,
  ``eval/linear_probe``, ``eval/feature_std`` (upstream ``train/feature_variance``'s role),
  ``eval/effective_rank``, ``eval/val_loss``.
- ``epoch_end``: ``train/epoch_loss``, ``train/epoch_s``. ``started`` and ``fatal``: a text
  entry (``attempts``) — how each attempt started (resumed from where, micro-batch, features),
  and why one ended, so a fallback shows where its curve changes.

Every attempt of a night writes to one folder, ``<night>/tensorboard`` beside the
``attempt-NN`` run dirs (a run dir of another name gets ``RUN_DIR/tensorboard``), at the global
step: a resumed attempt continues the curve, and one rolled back to an earlier checkpoint
purges the points after its start step (``purge_step``), so TensorBoard shows the curve the
model really followed. Only the writer rank gets scalar events, so only it writes here.
Needs the ``tensorboard`` package (``pip install 'hjepa-night[tensorboard]'``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trainer.events import GB


def tensorboard_dir(run_dir: str | Path) -> Path:
    """The night's TensorBoard folder for an attempt's run dir (see the module docstring)."""
    run_dir = Path(run_dir)
    if re.fullmatch(r"attempt-\d+", run_dir.name):
        return run_dir.parent / "tensorboard"
    return run_dir / "tensorboard"


def require_tensorboard() -> None:
    """Raise ImportError with the fix when ``tensorboard`` is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ImportError(
            "logging.use_tensorboard: true needs the tensorboard package: "
            "pip install 'hjepa-night[tensorboard]' (or set it to false)"
        ) from None


class TensorBoardSink:
    """Turns emitted events into TensorBoard scalars and text (created at the first
    ``started`` event, so a resumed attempt's ``start_step`` sets the purge point)."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None
        self.step = 0

    def _open(self, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # points from step start_step + 1 on belong to an abandoned future: purged
        self.writer = SummaryWriter(
            str(self.log_dir), purge_step=start_step + 1 if start_step > 0 else None
        )

    def __call__(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "started":
            self.step = int(ev.get("start_step") or 0)
            if self.writer is None:
                self._open(self.step)
            self._text(
                f"started at step {self.step} (epoch {ev.get('start_epoch')})"
                + (f", resumed from {ev['resumed_from']}" if ev.get("resumed_from") else "")
                + f"; {ev.get('device')} {ev.get('precision')}, micro-batch "
                f"{ev.get('micro_batch')} x {ev.get('accum_steps')}, {ev.get('epochs')} epochs;"
                f" features {ev.get('features')}"
            )
            return
        if self.writer is None:
            return
        if kind == "step":
            self.step = int(ev["step"])
            self._scalars(
                {
                    "train/loss": ev.get("loss"),
                    "train/grad_norm": ev.get("grad_norm"),
                    "train/lr": ev.get("lr"),
                    "train/ema_momentum": ev.get("ema_momentum"),
                    "train/img_per_s": ev.get("img_per_s"),
                    "train/step_s": ev.get("step_s"),
                    "train/micro_batch": ev.get("micro_batch"),
                    **{f"train/loss_level_{i}": v for i, v in enumerate(ev.get("loss_levels", []))},
                    **{f"train/{k}": v for k, v in (ev.get("loss_parts") or {}).items()},
                    **{
                        f"memory/{k}_gb": v / GB
                        for k, v in (ev.get("device_mem") or {}).items()
                        if isinstance(v, int | float) and k != "total"  # the device's size
                    },
                }
            )
        elif kind == "eval":
            knn = ev.get("knn") or {}
            self._scalars(
                {
                    "eval/knn_accuracy": knn.get("20"),
                    **{f"eval/knn_{k}": v for k, v in knn.items()},
                    "eval/linear_probe": ev.get("linear_probe"),
                    "eval/feature_std": ev.get("feature_std"),
                    "eval/effective_rank": ev.get("effective_rank"),
                    "eval/val_loss": ev.get("val_loss"),
                }
            )
        elif kind == "epoch_end":
            self._scalars(
                {"train/epoch_loss": ev.get("mean_loss"), "train/epoch_s": ev.get("seconds")}
            )
        elif kind == "fatal":
            self._text(f"ended at step {self.step}: {ev.get('kind')}: {ev.get('message')}")
        if kind in ("eval", "checkpoint", "finished", "fatal"):
            self.writer.flush()

    def _scalars(self, values: dict[str, Any]) -> None:
        for tag, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(tag, float(value), self.step)

    def _text(self, text: str) -> None:
        if self.writer is not None:
            self.writer.add_text("attempts", text, self.step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
