"""The worker's checkpoints: what a save carries, how a resume restores it, which one is best.

    checkpointer = Checkpointer(cfg, run_dir, dist, ev, model, step_fn, state, faults)
    resumed_from = checkpointer.resume("auto")      # path of the checkpoint loaded, or None
    saved = checkpointer.save("epoch")              # epoch|steps|time|stop|final
    checkpointer.track_best(eval_result, saved)

A checkpoint holds the model, EMA target, optimizer, scaler, the :class:`TrainState` (position,
schedule in force, best metric), the RNG states and the config, so a resume continues the same
curve. ``best.pt`` follows ``checkpoint.metric``/``mode`` over verified checkpoints (a ``best``
event names it). The file format, atomic writes, verification and the choice of the newest
good checkpoint live in ``trainer/checkpoint/store.py``; this object decides what goes in and out.

With several ranks rank 0 alone reads and writes checkpoints: a resume's state is broadcast to
every rank (no shared filesystem needed), and a save on the other ranks writes nothing. Every
rank takes part in every save (saves happen at agreed steps only): each restarts its checkpoint
timer and hands in a digest of its weights (:func:`state_digest`, model and EMA target), which
the ``checkpoint`` event lists per rank — equal digests are the proof that the ranks agree. The
checkpoint records the world size and the global batch; the ``resumed`` event names both world
sizes.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import store as ckpt
from trainer.checkpoint.restore import load_model_state, load_optimizer_state, optimizer_param_names
from trainer.config import Config
from trainer.eval.metrics import EvalResult
from trainer.events import (
    CHECKPOINT_DIR,
    Best,
    Checkpoint,
    CheckpointRejected,
    Resumed,
    ResumePartial,
)
from trainer.runtime.dist import Dist
from trainer.runtime.emitter import Emitter
from trainer.train.faults import FaultInjector
from trainer.train.state import TrainState, rng_state, set_rng_state
from trainer.train.step import TrainStep


class Checkpointer:
    """Saves and restores the complete training state; owns the checkpoint writer and this
    process's checkpoint timer (``last_save``)."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        dist: Dist,
        ev: Emitter,
        model: Any,
        step_fn: TrainStep,
        state: TrainState,
        faults: FaultInjector,
    ) -> None:
        self.cfg, self.run_dir, self.dist, self.ev = cfg, run_dir, dist, ev
        self.model, self.step_fn, self.state, self.faults = model, step_fn, state, faults
        self.writer = ckpt.CheckpointWriter(run_dir / CHECKPOINT_DIR, cfg.checkpoint.keep_last_k)
        self.last_save = time.monotonic()

    def clock_due(self) -> bool:
        """This process's timer: ``checkpoint.every_minutes`` since its last save."""
        minutes = self.cfg.checkpoint.every_minutes
        return minutes is not None and time.monotonic() - self.last_save >= 60.0 * minutes

    def resume(self, request: str | None) -> str | None:
        """Load ``request`` (auto|PATH) into the model, optimizer, scaler, state and RNG;
        returns the checkpoint's path (None when there was nothing to resume)."""
        if not request:
            return None
        self.ev.progress(phase="checkpoint")

        def reject(path: Path, reason: str) -> None:
            self.ev.emit(CheckpointRejected(path=str(path), reason=reason))
            print(
                f"resume: {path.name} rejected ({reason.split(': ', 1)[-1]}); "
                "trying the next older checkpoint",
                file=sys.stderr,
                flush=True,
            )

        found: tuple[Path, dict[str, Any]] | Exception
        try:
            found = (
                ckpt.resolve(request, self.run_dir / CHECKPOINT_DIR, reject)
                if self.dist.main
                else ValueError("not rank 0")
            )
        except ckpt.NoCheckpointError as exc:
            found = exc
        found = self.dist.broadcast(found)  # rank 0's checkpoint (or its error) on every rank
        if isinstance(found, Exception):
            raise found
        path, state = found
        off = {
            name for name, status in self.model.feature_status().items() if status.startswith("off")
        }
        report = load_model_state(self.model, state["model"], off)
        opt = load_optimizer_state(self.step_fn.optimizer, state, self.model, report.partial)
        if report.partial or opt == "reset":
            what = f"features off: {', '.join(sorted(off)) or 'none'}"
            self.ev.emit(
                ResumePartial(
                    path=str(path),
                    dropped=report.dropped,
                    missing=report.missing,
                    optimizer=opt,
                    message=f"loaded every key that fits ({what}); {len(report.dropped)} dropped, "
                    f"{len(report.missing)} missing; optimizer state {opt}",
                )
            )
        if self.step_fn.scaler is not None and state.get("scaler"):
            self.step_fn.scaler.load_state_dict(state["scaler"])
        rng_note = set_rng_state(state["rng"])
        self.faults.carry_fired(path.parent.parent)  # the writer's record: one fault history
        st = self.state
        st.restore(state, self.cfg)
        self.ev.emit(
            Resumed(
                path=str(path),
                epoch=st.epoch,
                step=st.step,
                samples_in_epoch=st.samples_in_epoch,
                world_size=self.dist.world,
                from_world_size=int(state.get("world_size", 1)),
                rng=rng_note,
            )
        )
        return str(path)

    def track_best(self, res: EvalResult, saved: ckpt.Saved) -> None:
        """best.pt ← ``saved`` when it is better by checkpoint.metric/mode (and verified); a
        ``best`` event names it."""
        c, st = self.cfg.checkpoint, self.state
        if not c.save_best or not saved.verified:
            return
        value = {
            "val_loss": res.val_loss,
            "knn": res.knn.get("20"),
            "linear_probe": res.linear_probe,
        }[c.metric]
        if value is None:
            return
        better = st.best is None or (value < st.best if c.mode == "min" else value > st.best)
        if better:
            st.best = value
            self.writer.mark_best(saved.path, c.metric, value)
            self.ev.emit(
                Best(
                    path=str(saved.path),
                    metric=c.metric,
                    value=float(value),
                    epoch=st.epoch,
                    step=st.step,
                )
            )

    def save(self, reason: str) -> ckpt.Saved:
        """Checkpoint the complete training state (reason: epoch|steps|time|stop|final); with
        several ranks every rank calls it at the same step, only rank 0 writes (the others get
        a Saved with no path)."""
        self.last_save = time.monotonic()  # every rank's timer: the next time save is agreed
        digests = self.dist.gather(state_digest(self.model))
        if not self.dist.main:
            return ckpt.Saved(path=Path(), verified=False, problem="not rank 0")
        self.ev.progress(phase="checkpoint")
        t = time.monotonic()
        st = self.state
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.step_fn.optimizer.state_dict(),
            "scaler": self.step_fn.scaler.state_dict() if self.step_fn.scaler else {},
            "step": st.step,
            "epoch": st.epoch,
            "samples_in_epoch": st.samples_in_epoch,
            "total_epochs": st.total_epochs,
            "schedule": st.schedule.state(),
            "optimizer_params": optimizer_param_names(self.model, self.step_fn.optimizer),
            "best": st.best,
            "world_size": self.dist.world,
            "global_batch": st.eff,
            "rng": rng_state(),
            "config": self.cfg.to_yaml_dict(),
        }
        meta = {
            "epoch": st.epoch,
            "step": st.step,
            "samples_in_epoch": st.samples_in_epoch,
            "config_hash": self.cfg.hash(),
            "reason": reason,
            "micro_batch": st.micro,
            "accum_steps": st.accum,
            "world_size": self.dist.world,
            "total_epochs": st.total_epochs,
        }
        saved = self.writer.save(state, meta)
        self.last_save = time.monotonic()
        event = Checkpoint(
            path=str(saved.path),
            epoch=st.epoch,
            step=st.step,
            verified=saved.verified,
            seconds=time.monotonic() - t,
            reason=reason,
            digests=digests,
        )
        if saved.problem:
            event.problem = saved.problem  # type: ignore[attr-defined]
        self.ev.emit(event)
        self.ev.progress(phase="train")
        return saved


def state_digest(model: torch.nn.Module) -> str:
    """A short digest of every tensor in ``model.state_dict()`` (weights, EMA target, buffers),
    bit for bit: two ranks with equal digests hold identical weights."""
    h = hashlib.sha256()
    for key, t in model.state_dict().items():
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
