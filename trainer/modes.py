"""The worker's other modes: ``--eval-only`` (evaluate a checkpoint), ``--pictures`` (picture a
checkpoint: ``trainer/pictures.py``) and ``--probe N`` (time N optimizer steps, and bound the
linear probe's cost on this CPU). Part of :class:`trainer.loop.Worker` (a base class of it);
all use its ``setup``, and with several ranks every rank takes part (rank 0 evaluates, pictures
and reports).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from trainer import checkpoints as ckpt
from trainer.datasets import num_classes
from trainer.events import EXIT_OK, Finished
from trainer.prefetch import DevicePrefetch
from trainer.probe import cost_bound_s


class OtherModes:
    """``eval_only``, ``pictures_only`` and ``probe`` for the Worker."""

    setup: Any
    resume: Any
    started: Any
    cfg: Any

    def eval_only(self, pictures: bool = False) -> int:
        """Evaluate the ``--resume`` checkpoint; ``pictures``: then picture it too."""
        epoch = self._load_for("--eval-only")
        self.evaluate_main(epoch)
        if pictures:
            self.picture(Path(self.resumed_from), in_memory=True)
        return self._finished(epoch)

    def pictures_only(self) -> int:
        """``--pictures``: the pictures of the ``--resume`` checkpoint, nothing else."""
        epoch = self._load_for("--pictures")
        self.picture(Path(self.resumed_from), in_memory=True)
        return self._finished(epoch)

    def _load_for(self, mode: str) -> int:
        """Set up and load the ``--resume`` checkpoint; the epoch it completed."""
        self.setup()
        if not self.resume_request:
            raise ckpt.NoCheckpointError(f"{mode} needs --resume PATH|auto")
        self.resume()
        self.started()
        return self.epoch - 1 if self.samples_in_epoch == 0 else self.epoch

    def _finished(self, epoch: int) -> int:
        self.ev.emit(
            Finished(
                reason="completed", epoch=epoch, step=self.step, seconds=time.monotonic() - self.t0
            )
        )
        return EXIT_OK

    def probe(self, steps: int, warmup: int = 2) -> dict[str, float]:
        """Time ``steps`` optimizer steps after ``warmup`` (data loading included)."""
        self.setup()
        self.model.train()
        it = DevicePrefetch(iter(self.loader(1, 0)), self.device)
        times = []
        previous = None
        for i in range(warmup + steps):
            t = time.monotonic()
            micro = [next(it) for _ in range(self.accum)]
            pending = self.step_fn.launch(  # pipelined as in training: read the last one now
                micro,
                lr=self.schedule.lr_at(0.0),
                momentum=self.schedule.ema_at(0.0),
                extra=[] if self.dist.world > 1 else None,
            )
            if previous is not None:
                previous.result()
            previous = pending
            if i == warmup + steps - 1:
                pending.result()
            if i >= warmup:
                times.append(time.monotonic() - t)
            self.ev.progress(phase="train", step=i + 1)
        ms = 1000 * sum(times) / len(times)
        return {
            "ms_per_step": ms,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch_seconds": ms / 1000 * self.steps_per_epoch,
            "img_per_s": self.eff / (ms / 1000),
            "device": str(self.device),
            "micro_batch": self.micro,
            "accum_steps": self.accum,
            "world_size": self.dist.world,
            "memory": self.mem(),
            "linear_probe_bound_s": self.probe_bound_s(),
        }

    def probe_bound_s(self) -> float:
        """The most one evaluation's linear probe can take here (0 when it is off), for
        preflight's eval reserve: the probe set's size, the feature width, the classes."""
        ev = self.cfg.evaluation
        if not ev.linear_probe.enabled:
            return 0.0
        spec = self.cfg.data.datasets[ev.dataset_index]
        return cost_bound_s(
            ev.max_train_samples,
            self.cfg.model.embed_dim,
            num_classes(spec, self.cfg.data),
            len(ev.linear_probe.l2_grid),
            ev.linear_probe.max_iter,
        )
