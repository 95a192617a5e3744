"""The worker's other modes: ``--eval-only`` (evaluate a checkpoint), ``--pictures`` (picture a
checkpoint: ``trainer/eval/pictures.py``) and ``--probe N`` (time N optimizer steps, and bound the
linear probe's cost on this CPU). Functions of a :class:`trainer.train.loop.Worker`: all use its
``setup``, and with several ranks every rank takes part (rank 0 evaluates, pictures and
reports).

    code = eval_only(worker, pictures=False)
    code = pictures_only(worker)
    numbers = probe(worker, steps=20)
    numbers = probe_variants(worker, 20, {"model.use_fpn=false": cfg_without_fpn})

``--probe N --probe-variant KEY=VALUE ...`` (the per-feature probe of preflight and of a night's
start): the config as given and then each variant (the config with that one key changed) are
timed one after the other in THIS process, each in a fresh worker built from its config, with
the memory of the previous one released in between
(``trainer.runtime.allocator.release_freed_memory``: CUDA's peak counter is reset, a CPU heap is
trimmed, so each reading is that configuration's own). One process for all of them saves a Python +
torch start-up per variant. Each result is reported as soon as it is measured (``report``), so a
caller that has to stop the probe early still has the ones done. A variant that runs out of memory
reads ``{"oom": true}``; one that fails otherwise ``{"error": "..."}``; the configuration as given
must run (it raises as usual).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.checkpoint import store as ckpt
from trainer.data.datasets import num_classes
from trainer.data.prefetch import DevicePrefetch
from trainer.eval.linear_probe import cost_bound_s
from trainer.events import EXIT_OK, Finished
from trainer.runtime.allocator import release_freed_memory
from trainer.runtime.device import is_oom

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.train.loop import Worker


def eval_only(w: Worker, pictures: bool = False) -> int:
    """Evaluate the ``--resume`` checkpoint (an ``eval`` event); ``pictures``: then picture it
    too; and finish."""
    epoch = _load_for(w, "--eval-only")
    w.evaluator.evaluate_main(epoch)
    if pictures:
        w.evaluator.picture(Path(w.resumed_from), in_memory=True)  # type: ignore[arg-type]
    return _finished(w, epoch)


def pictures_only(w: Worker) -> int:
    """``--pictures``: the pictures of the ``--resume`` checkpoint, nothing else."""
    epoch = _load_for(w, "--pictures")
    w.evaluator.picture(Path(w.resumed_from), in_memory=True)  # type: ignore[arg-type]
    return _finished(w, epoch)


def _load_for(w: Worker, mode: str) -> int:
    """Set up and load the ``--resume`` checkpoint; the epoch it completed."""
    w.setup()
    if not w.resume_request:
        raise ckpt.NoCheckpointError(f"{mode} needs --resume PATH|auto")
    w.resume()
    w.started()
    return w.state.epochs_done()


def _finished(w: Worker, epoch: int) -> int:
    w.ev.emit(
        Finished(
            reason="completed", epoch=epoch, step=w.state.step, seconds=time.monotonic() - w.t0
        )
    )
    return EXIT_OK


def probe_variants(
    w: Worker,
    steps: int,
    variants: dict[str, Any],
    warmup: int = 2,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """:func:`probe` of ``w``'s config, then of each config in ``variants`` (a label, e.g.
    ``"model.use_fpn=false"``, to its Config), each in a fresh worker of this process (see the
    module docstring); returns the first probe with ``"variants": {label: probe}``.
    ``report`` gets each result as it is measured (``{"variant": label, ...}``; the config as
    given has the label ``None``)."""
    results: dict[str, Any] = {}
    base: dict[str, Any] = {}
    for label, cfg in [(None, w.cfg), *variants.items()]:
        release_freed_memory()
        worker = type(w)(cfg, w.run_dir, None, w.ev, dist=w.dist)
        # the first configuration warms up one step more: the process's one-time costs
        # (thread pools, allocator growth, kernel caches) land there, not in its timing
        extra = 1 if label is None else 0
        try:
            res: dict[str, Any] = probe(worker, steps, warmup + extra)
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


def probe(w: Worker, steps: int, warmup: int = 2) -> dict[str, Any]:
    """Time ``steps`` optimizer steps after ``warmup`` (data loading included)."""
    w.setup()
    st = w.state
    w.model.train()
    it = DevicePrefetch(iter(w.loader(1, 0)), w.device)
    times = []
    previous = None
    for i in range(warmup + steps):
        t = time.monotonic()
        micro = [next(it) for _ in range(st.accum)]
        pending = w.step_fn.launch(  # pipelined as in training: read the last one now
            micro,
            lr=st.schedule.lr_at(0.0),
            momentum=st.schedule.ema_at(0.0),
            extra=[] if w.dist.world > 1 else None,
        )
        if previous is not None:
            previous.result()
        previous = pending
        if i == warmup + steps - 1:
            pending.result()
        if i >= warmup:
            times.append(time.monotonic() - t)
        w.ev.progress(phase="train", step=i + 1)
    ms = 1000 * sum(times) / len(times)
    return {
        "ms_per_step": ms,
        "steps_per_epoch": st.steps_per_epoch,
        "epoch_seconds": ms / 1000 * st.steps_per_epoch,
        "img_per_s": st.eff / (ms / 1000),
        "device": str(w.device),
        "micro_batch": st.micro,
        "accum_steps": st.accum,
        "world_size": w.dist.world,
        "memory": w.mem(),
        "linear_probe_bound_s": linear_probe_bound_s(w.cfg),
    }


def linear_probe_bound_s(cfg: Config) -> float:
    """The most one evaluation's linear probe can take here (0 when it is off), for
    preflight's eval reserve: the probe set's size, the feature width, the classes."""
    ev = cfg.evaluation
    if not ev.linear_probe.enabled:
        return 0.0
    spec = cfg.data.datasets[ev.dataset_index]
    return cost_bound_s(
        ev.max_train_samples,
        cfg.model.embed_dim,
        num_classes(spec, cfg.data),
        len(ev.linear_probe.l2_grid),
        ev.linear_probe.max_iter,
    )
