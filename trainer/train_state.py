"""The worker's training state: where training is, what a checkpoint carries, how a resume
restores it.

Part of :class:`trainer.loop.Worker` (a base class of it). The position is ``epoch`` (the epoch
in progress, 1-based), ``samples_in_epoch`` and ``step`` (optimizer steps taken); the LR/EMA
``schedule`` in force (base total + epoch cuts) travels in every checkpoint with the model, EMA
target, optimizer, scaler, best metric and RNG states, so a resume continues the same curve.
On resume the curve continues exactly when ``training.epochs`` equals the checkpoint's total in
force; otherwise a cut is added at the resume position. ``best.pt`` follows
``checkpoint.metric``/``mode`` over verified checkpoints (a ``best`` event names it).

With several ranks rank 0 alone reads and writes checkpoints: a resume's state is broadcast to
every rank (no shared filesystem needed), and a save on the other ranks writes nothing. Every
rank takes part in every save (saves happen at agreed steps only): each restarts its checkpoint
timer and hands in a digest of its weights (:func:`state_digest`, model and EMA target), which
the ``checkpoint`` event lists per rank — equal digests are the proof that the ranks agree. The
checkpoint records the world size and the global batch. The global batch is the recipe's
(``trainer.dist.per_rank_batch``), so a resume at another world size continues at the same
sample position with the same global batch; the ``resumed`` event names both world sizes.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer import checkpoints as ckpt
from trainer.evaluation import EvalResult
from trainer.events import (
    CHECKPOINT_DIR,
    Best,
    Checkpoint,
    CheckpointRejected,
    Resumed,
    ResumePartial,
)
from trainer.resume import load_model_state, load_optimizer_state, optimizer_param_names
from trainer.schedules import schedule_from_state


class TrainState:
    """Position, resume, checkpoint and best for the Worker (uses its ``cfg``, ``run_dir``,
    ``resume_request``, ``model``, ``step_fn``, ``writer``, ``micro``, ``accum``, ``eff``,
    ``epoch_size`` and ``ev``; sets the position, ``schedule``, ``best``, ``last_save``)."""

    @property
    def total_epochs(self) -> int:
        """The total in force (after every epoch cut)."""
        return self.schedule.total_epochs

    def progress(self) -> float:
        """Epochs done, as a float (the schedules' clock)."""
        return (self.epoch - 1) + self.samples_in_epoch / self.epoch_size

    def resume(self) -> None:
        if not self.resume_request:
            return
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
                ckpt.resolve(self.resume_request, self.run_dir / CHECKPOINT_DIR, reject)
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
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.samples_in_epoch = int(state["samples_in_epoch"])
        self.best = state.get("best")
        rng_note = set_rng_state(state["rng"])
        self.carry_fired(path.parent.parent)
        self.fired = self.dist.broadcast(self.fired)  # the writer's record: one fault history
        if self.samples_in_epoch + self.eff > self.epoch_size:  # epoch was complete
            self.epoch, self.samples_in_epoch = self.epoch + 1, 0
        self.resume_schedule(state)
        self.resumed_from = str(path)
        self.ev.emit(
            Resumed(
                path=str(path),
                epoch=self.epoch,
                step=self.step,
                samples_in_epoch=self.samples_in_epoch,
                world_size=self.dist.world,
                from_world_size=int(state.get("world_size", 1)),
                rng=rng_note,
            )
        )

    def resume_schedule(self, state: dict[str, Any]) -> None:
        """The checkpoint's curve; a cut at the resume position if training.epochs differs."""
        legacy_total = int(state.get("total_epochs", self.cfg.training.epochs))
        self.schedule = schedule_from_state(self.cfg, state.get("schedule"), legacy_total)
        wanted = self.cfg.training.epochs
        if wanted != self.schedule.total_epochs:
            done = self.epoch - 1 if self.samples_in_epoch == 0 else self.epoch
            self.schedule = self.schedule.with_cut(self.progress(), max(wanted, done))

    def track_best(self, res: EvalResult, saved: ckpt.Saved) -> None:
        """best.pt ← ``saved`` when it is better by checkpoint.metric/mode (and verified); a
        ``best`` event names it."""
        c = self.cfg.checkpoint
        if not c.save_best or not saved.verified:
            return
        value = {
            "val_loss": res.val_loss,
            "knn": res.knn.get("20"),
            "linear_probe": res.linear_probe,
        }[c.metric]
        if value is None:
            return
        better = self.best is None or (value < self.best if c.mode == "min" else value > self.best)
        if better:
            self.best = value
            self.writer.mark_best(saved.path, c.metric, value)
            self.ev.emit(
                Best(
                    path=str(saved.path),
                    metric=c.metric,
                    value=float(value),
                    epoch=self.epoch,
                    step=self.step,
                )
            )

    # -------------------------------------------------------------------------- checkpoint
    def save(self, reason: str) -> ckpt.Saved:
        """Checkpoint the complete training state (reason: epoch|steps|time|stop|final); with
        several ranks every rank calls it at the same step, only rank 0 writes (the others get
        a Saved with no path)."""
        self.last_save = time.monotonic()  # every rank's timer: the next time save is agreed
        self.save_agreed = False
        digests = self.dist.gather(state_digest(self.model))
        if not self.dist.main:
            return ckpt.Saved(path=Path(), verified=False, problem="not rank 0")
        self.ev.progress(phase="checkpoint")
        t = time.monotonic()
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.step_fn.optimizer.state_dict(),
            "scaler": self.step_fn.scaler.state_dict() if self.step_fn.scaler else {},
            "step": self.step,
            "epoch": self.epoch,
            "samples_in_epoch": self.samples_in_epoch,
            "total_epochs": self.total_epochs,
            "schedule": self.schedule.state(),
            "optimizer_params": optimizer_param_names(self.model, self.step_fn.optimizer),
            "best": self.best,
            "world_size": self.dist.world,
            "global_batch": self.eff,
            "rng": rng_state(),
            "config": self.cfg.to_yaml_dict(),
        }
        meta = {
            "epoch": self.epoch,
            "step": self.step,
            "samples_in_epoch": self.samples_in_epoch,
            "config_hash": self.cfg.hash(),
            "reason": reason,
            "micro_batch": self.micro,
            "accum_steps": self.accum,
            "world_size": self.dist.world,
            "total_epochs": self.total_epochs,
        }
        saved = self.writer.save(state, meta)
        self.last_save = time.monotonic()
        event = Checkpoint(
            path=str(saved.path),
            epoch=self.epoch,
            step=self.step,
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


# ---------------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> str:
    """Restore the RNG states of ``rng_state``; returns "" when every one was restored, else a
    line saying what was not. CUDA: the states of the first min(saved, visible) GPUs (a
    checkpoint written where more GPUs were visible resumes with fewer; the others keep their
    seeded state)."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    saved = list(state.get("cuda") or [])
    visible = torch.cuda.device_count() if saved and torch.cuda.is_available() else 0
    restored = min(len(saved), visible)
    for index in range(restored):
        torch.cuda.set_rng_state(saved[index], index)
    if restored == len(saved):
        return ""
    return (
        f"CUDA RNG state restored for {restored} of the {len(saved)} GPUs the checkpoint saw "
        f"({visible} visible now)"
    )
