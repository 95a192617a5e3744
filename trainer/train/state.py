"""Where training is: the position, the batch shape, the LR/EMA schedule in force and the best
metric so far — one object the worker's parts share by reference.

    state = TrainState(make_schedule(cfg), epoch_size=1000, micro=32, accum=2, world=1)
    state.progress()          # epochs done, as a float: the schedules' clock

The position is ``epoch`` (the epoch in progress, 1-based), ``samples_in_epoch`` and ``step``
(optimizer steps taken). The ``schedule`` (base total + epoch cuts) travels in every checkpoint
(``trainer.checkpoint.checkpointer``), so a resume continues the same curve: it continues exactly
when ``training.epochs`` equals the checkpoint's total in force; otherwise a cut is added at the
resume position (:meth:`TrainState.restore`). ``micro``/``accum`` are ONE rank's; ``eff`` is the
global batch of a step (micro × accum × world = the recipe's data.batch_size × accumulation,
``trainer.runtime.dist.per_rank_batch``), so a resume at another world size continues at the same
sample position with the same global batch. The module also holds the RNG states a checkpoint
carries (:func:`rng_state`, :func:`set_rng_state`).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from trainer.config import Config
from trainer.train.schedules import Schedule, schedule_from_state


class TrainState:
    """The position, batch shape, schedule and best metric of one attempt (owns them all; the
    loop, the step outcomes, the control channel and the checkpointer move them)."""

    def __init__(self, schedule: Schedule, epoch_size: int, micro: int, accum: int, world: int):
        self.schedule = schedule
        self.epoch_size = epoch_size
        self.world = world
        self.epoch = 1  # epoch in progress (1-based)
        self.samples_in_epoch = 0
        self.step = 0  # optimizer steps completed
        self.best: float | None = None
        self.set_batch(micro, accum)

    def set_batch(self, micro: int, accum: int) -> None:
        """Micro-batch and accumulation of ONE rank; ``eff`` is the global batch of a step
        (micro × accum × world = the recipe's data.batch_size × accumulation_steps)."""
        self.micro, self.accum = micro, accum
        self.eff = micro * accum * self.world
        if self.epoch_size < self.eff:
            raise ValueError(
                f"epoch size {self.epoch_size} is smaller than the effective batch {self.eff}"
            )
        self.steps_per_epoch = self.epoch_size // self.eff

    @property
    def total_epochs(self) -> int:
        """The total in force (after every epoch cut)."""
        return self.schedule.total_epochs

    def progress(self) -> float:
        """Epochs done, as a float (the schedules' clock)."""
        return (self.epoch - 1) + self.samples_in_epoch / self.epoch_size

    def epochs_done(self) -> int:
        """Whole epochs done: the epoch in progress counts once it has begun."""
        return self.epoch - 1 if self.samples_in_epoch == 0 else self.epoch

    def cut(self, total: int) -> None:
        """An epoch cut at the current progress: the LR/EMA curves stay continuous."""
        self.schedule = self.schedule.with_cut(self.progress(), total)

    def at_start(self) -> bool:
        """Nothing trained yet (a fresh run, not a resume past its first sample)."""
        return self.step == 0 and self.samples_in_epoch == 0 and self.epoch == 1

    def restore(self, state: dict[str, Any], cfg: Config) -> None:
        """A checkpoint's position, best and curve; the next epoch when the saved one was
        complete; a cut at the resume position if training.epochs differs from its total."""
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.samples_in_epoch = int(state["samples_in_epoch"])
        self.best = state.get("best")
        if self.samples_in_epoch + self.eff > self.epoch_size:  # epoch was complete
            self.epoch, self.samples_in_epoch = self.epoch + 1, 0
        legacy_total = int(state.get("total_epochs", cfg.training.epochs))
        self.schedule = schedule_from_state(cfg, state.get("schedule"), legacy_total)
        wanted = cfg.training.epochs
        if wanted != self.schedule.total_epochs:
            self.cut(max(wanted, self.epochs_done()))


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
