"""The worker's other modes: ``--eval-only`` (evaluate a checkpoint), ``--pictures`` (picture a
checkpoint: ``trainer/pictures.py``) and ``--probe N`` (time N optimizer steps, and bound the
linear probe's cost on this CPU). Part of :class:`trainer.loop.Worker` (a base class of it);
all use its ``setup``, and with several ranks every rank takes part (rank 0 evaluates, pictures
and reports).

``--probe N --probe-variant KEY=VALUE ...`` (the per-feature probe of preflight and of a night's
start): the config as given and then each variant (the config with that one key changed) are
timed one after the other in THIS process, each in a fresh worker built from its config, with
the memory of the previous one released in between (``trainer.allocator.release_freed_memory``:
CUDA's peak counter is reset, a CPU heap is trimmed, so each reading is that configuration's
own). One process for all of them saves a Python + torch start-up per variant. Each result is
reported as soon as it is measured (``report``), so a caller that has to stop the probe early
still has the ones done. A variant that runs out of memory reads ``{"oom": true}``; one that
fails otherwise ``{"error": "..."}``; the configuration as given must run (it raises as usual).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer import checkpoints as ckpt
from trainer.allocator import release_freed_memory
from trainer.datasets import num_classes
from trainer.device import is_oom
from trainer.events import EXIT_OK, Finished
from trainer.prefetch import DevicePrefetch
from trainer.probe import cost_bound_s


class OtherModes:
    """``eval_only``, ``pictures_only`` and ``probe`` for the Worker."""

    setup: Any
    resume: Any
    started: Any
    cfg: Any
    run_dir: Any
    ev: Any
    dist: Any

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

    def probe_variants(
        self,
        steps: int,
        variants: dict[str, Any],
        warmup: int = 2,
        report: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """:meth:`probe` of this worker's config, then of each config in ``variants`` (a label,
        e.g. ``"model.use_fpn=false"``, to its Config), each in a fresh worker of this process
        (see the module docstring); returns the first probe with ``"variants": {label: probe}``.
        ``report`` gets each result as it is measured (``{"variant": label, ...}``; the
        config as given has the label ``None``)."""
        results: dict[str, Any] = {}
        base: dict[str, Any] = {}
        for label, cfg in [(None, self.cfg), *variants.items()]:
            release_freed_memory()
            worker = type(self)(cfg, self.run_dir, None, self.ev, dist=self.dist)
            # the first configuration warms up one step more: the process's one-time costs
            # (thread pools, allocator growth, kernel caches) land there, not in its timing
            extra = 1 if label is None else 0
            try:
                res: dict[str, Any] = worker.probe(steps, warmup + extra)
            except Exception as exc:
                if label is None:
                    raise
                res = {"oom": True} if is_oom(exc) else {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                del worker
            if report is not None:
                report({"variant": label, **res})
            if label is None:
                base = res
            else:
                results[label] = res
        release_freed_memory()
        return {**base, "variants": results}

    def probe(self, steps: int, warmup: int = 2) -> dict[str, Any]:
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
