"""The worker's training loop: setup → resume → epochs (steps, control, evals, checkpoints) → end.

    worker = Worker(cfg, run_dir, resume="auto", emitter=emitter)
    code = worker.run()          # an exit code from trainer.events

Phases are short named methods. :class:`Worker` holds the epoch loop; ``trainer/train/modes.py`` has
its other modes (``eval_only``, ``probe``). It builds a few objects at setup and calls them,
each owning its part of the attempt and given what it needs by its constructor:

- :class:`~trainer.train.state.TrainState` (``state``): the position, batch shape, schedule in
  force and best metric — the one thing the others share;
- :class:`~trainer.checkpoint.checkpointer.Checkpointer` (``checkpointer``): resume, save, best.pt,
the
  checkpoint timer;
- :class:`~trainer.train.control.ControlChannel` (``control``): signals and the control file,
  and every decision the ranks agree on (it exists from ``__init__``: the signal handlers are
  installed before setup);
- :class:`~trainer.train.faults.FaultInjector` (``faults``): the ``faults.*`` test aids, per step;
- :class:`~trainer.eval.evaluator.Evaluator` (``evaluator``): the ``eval`` event, val loss, mask
  image;
- :class:`~trainer.train.outcomes.StepOutcomes` (``outcomes``): a launched step's outcome, read
  later;
- :class:`~trainer.runtime.dist.Dist` (``dist``): rank and world size under the launcher. With
several
  ranks the model trains under DDP, the recipe's batch is shared (``per_rank_batch``): ``eff``
  is the global batch (micro × accumulation × world = data.batch_size × accumulation),
  the position counts global samples, rank 0 alone writes events, checkpoints and evaluates,
  and every decision a rank could take alone (stop, control, a time checkpoint) is agreed in
  the step's all-reduce (``ControlChannel.sync_*``): no rank acts on what only it has seen.

Signals only set a flag; the loop checkpoints at the next agreed step boundary and exits
``EXIT_STOPPED``. The control file is polled at step boundaries (one ``os.stat`` per step).
Every failure ends in a ``fatal`` event with its kind and the matching exit code (see
``trainer/events.py``).

Contracts kept here:
- Steps are pipelined: step N+1 is launched before step N's numbers are read; what a step
  meant (applied, skipped for overflow, non-finite) is handled one step late by
  :class:`StepOutcomes`, which holds the overflow and logging
  contracts. A skipped step still consumes its batch (the data position moves on, so a
  resume replays nothing).
- The schedule (base total + epoch cuts) travels in every checkpoint. On resume the curve
  continues exactly when ``training.epochs`` equals the checkpoint's total in force; otherwise
  a cut is added at the resume position (a live cut the supervisor re-sent as an override, or a
  restart rung's epochs), so the LR/EMA curves stay continuous. A control-file cut adds a cut
  at the current progress. ``started.epochs`` and ``epoch_end.total_epochs`` are the total in
  force.
- Checkpoints: per epoch (``experiment.save_frequency``), per N steps, and per
  ``checkpoint.every_minutes`` (monotonic, since the last save); each is verified after writing
  (``checkpoint.verified``), and a ``best`` event follows whenever best.pt changes.
- ``step_s`` (heartbeats and step events): the median of the last 20 step durations, each from
  the start of its data wait to the end of its step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from trainer.checkpoint.checkpointer import Checkpointer
from trainer.checkpoint.store import Saved
from trainer.config import Config, write_resolved
from trainer.data.masks import MaskCollator
from trainer.data.pipeline import TrainLoader, build_eval_data, build_train_data
from trainer.data.prefetch import DevicePrefetch
from trainer.eval.evaluator import Evaluator
from trainer.events import EXIT_OK, EXIT_STOPPED, RESOLVED_CONFIG_FILE, EpochEnd, Finished, Started
from trainer.model.hjepa import build_model, compile_model
from trainer.runtime.allocator import keep_freed_memory
from trainer.runtime.cpu_threads import CpuThreads
from trainer.runtime.device import memory_readings, select_device, select_precision
from trainer.runtime.dist import Dist, per_rank_batch, wrap_ddp
from trainer.runtime.emitter import Emitter
from trainer.train.control import ControlChannel
from trainer.train.faults import FaultInjector, require_gradients
from trainer.train.health import HealthMonitor
from trainer.train.outcomes import StepOutcomes
from trainer.train.schedules import make_schedule, should_eval, should_save
from trainer.train.state import TrainState, seed_everything
from trainer.train.step import TrainStep


class StopRequestedError(Exception):
    pass


class Worker:
    """One attempt of the worker: builds its parts at setup and runs the epoch loop over them.
    Owns the config, the device, the model, the step function and the data; its parts own
    the rest (see the module docstring)."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        resume: str | None,
        emitter: Emitter,
        dist: Dist | None = None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist or Dist.from_env()
        self.run_dir = Path(run_dir)
        self.resume_request = resume
        self.ev = emitter
        self.control = ControlChannel(self.run_dir, self.dist, emitter)
        self.resumed_from: str | None = None
        self._loader_key: tuple[int, int] | None = None
        self.t0 = time.monotonic()
        self.cpu_threads: CpuThreads | None = None  # set in setup on a CPU device

    def on_signal(self, signum: int, frame: Any) -> None:
        """The signal handler: only a flag (``ControlChannel.on_signal``)."""
        self.control.on_signal(signum, frame)

    # ------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg = self.cfg
        self.device = select_device(self.dist.device_preference(cfg.device))
        d = cfg.distributed
        self.dist.init(self.device, d.backend, d.timeout_minutes)
        if self.dist.world > 1:  # the writer's recipe (and the night's overrides) for all
            self.cfg = cfg = self.dist.broadcast(cfg)
            self.resume_request = self.dist.broadcast(self.resume_request)
            if self.dist.main:  # the elected writer speaks for the run
                write_resolved(cfg, self.run_dir / RESOLVED_CONFIG_FILE)
                self.ev.only = None
                self.ev.start()
        seed_everything(cfg.experiment.seed)
        self.cpu_threads = CpuThreads.for_run(self.device, self.dist.world)
        self.precision = select_precision(self.device, cfg.training.use_amp, cfg.training.precision)
        self.ev.progress(phase="data")
        self.train_data = build_train_data(cfg, device=self.device)
        self.eval_data = build_eval_data(cfg)
        self.model = build_model(cfg).to(self.device)
        keep_freed_memory(self.device)  # CPU: no page faults on every step's buffers
        if cfg.training.compile:
            compile_model(self.model, self.device)  # ConfigError where it cannot work
        self.step_fn = TrainStep(
            self.model, cfg, self.device, self.precision, self.dist, wrap_ddp(self.model, self.dist)
        )
        if cfg.faults.check_gradients:
            require_gradients(self.model, self.step_fn.optimizer)
        self.masks = MaskCollator(
            cfg.masking, cfg.data.image_size, cfg.model.patch_size, seed=cfg.experiment.seed
        )
        micro, accum = per_rank_batch(
            cfg.data.batch_size, cfg.training.accumulation_steps, self.dist.world
        )
        self.state = TrainState(
            make_schedule(cfg), self.train_data.epoch_size, micro, accum, self.dist.world
        )
        self.faults = FaultInjector(
            cfg.faults, self.run_dir, self.dist, self.ev, self.model, self.step_fn, self.device
        )
        self.checkpointer = Checkpointer(
            cfg, self.run_dir, self.dist, self.ev, self.model, self.step_fn, self.state, self.faults
        )
        self.evaluator = Evaluator(
            cfg,
            self.model,
            self.eval_data,
            self.device,
            self.dist,
            self.ev,
            self.run_dir,
            self.state,
            self.cpu_threads,
        )
        self.health = HealthMonitor(cfg.logging.health_every_steps, self.ev.emit)
        self.outcomes = StepOutcomes(
            cfg,
            self.state,
            self.step_fn,
            self.model,
            self.health,
            self.ev,
            self.dist,
            self.control,
            self.mem,
        )
        if self.cpu_threads is not None:  # the set-up's seconds are the first sample
            self.cpu_threads.decide_now()

    def resume(self) -> None:
        """The requested checkpoint, if any (``Checkpointer.resume``)."""
        self.resumed_from = self.checkpointer.resume(self.resume_request)

    def where(self) -> tuple[int | None, int | None]:
        """(epoch, step) for a ``fatal`` event; (None, None) before setup."""
        state = getattr(self, "state", None)
        return (state.epoch, state.step) if state is not None else (None, None)

    # ------------------------------------------------------------------------------- events
    def started(self) -> None:
        st = self.state
        n_total = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.ev.emit(
            Started(
                pid=os.getpid(),
                config_hash=self.cfg.hash(),
                device=str(self.device),
                precision=self.precision.name,
                params_total=n_total,
                params_trainable=n_train,
                features={
                    **self.model.feature_status(),
                    "photometric": self.train_data.photometric,
                },
                micro_batch=st.micro,
                accum_steps=st.accum,
                world_size=self.dist.world,
                global_batch=st.eff,
                epochs=st.total_epochs,
                steps_per_epoch=st.steps_per_epoch,
                epoch_size=st.epoch_size,
                datasets=dict(self.train_data.sizes)
                if self.cfg.logging.log_dataset_distribution
                else {},
                start_epoch=st.epoch,
                start_step=st.step,
                resumed_from=self.resumed_from,
            )
        )

    def mem(self) -> dict[str, int]:
        return memory_readings(self.device)

    # ------------------------------------------------------------------------------- data
    def loader(self, epoch: int, start: int) -> DataLoader:
        """Epoch ``epoch`` from sample ``start``: one TrainLoader per attempt and batch shape,
        so its workers persist across epochs."""
        d, st = self.dist, self.state
        key = (st.micro, st.accum)
        if self._loader_key != key:
            self._train_loader = TrainLoader(
                self.cfg,
                self.train_data,
                self.masks,
                self.device,
                d.rank,
                d.world,
                st.micro,
                st.accum,
            )
            self._loader_key = key
        return self._train_loader.epoch(epoch, start)

    # ------------------------------------------------------------------------------- train
    def train_epoch(self) -> None:
        """One epoch of steps, pipelined: step N+1 is launched before step N's numbers are
        read (``TrainStep.launch``), so the host never waits for the device on the way. Step
        N's outcome (applied, skipped for overflow, non-finite) is handled one step later,
        and only where a decision needs the exact state is the step in flight settled first:
        a checkpoint (by steps or time), a stop, a fault aimed at a step number, the epoch end.
        """
        cfg, f, st, out = self.cfg, self.cfg.faults, self.state, self.outcomes
        epoch, start = st.epoch, st.samples_in_epoch
        t_epoch = time.monotonic()
        self.model.train()
        # "loader" until the first batch of the epoch arrives (workers starting), then "data".
        self.ev.progress(phase="loader", epoch=epoch, step=st.step)
        it = DevicePrefetch(iter(self.loader(epoch, start)), self.device)
        steps_left = (st.epoch_size - start) // st.eff
        out.start_epoch()
        every = cfg.checkpoint.every_n_steps
        for i in range(steps_left):
            t_step = time.monotonic()
            if i:
                self.ev.progress(phase="data", epoch=epoch, step=st.step)
            micro = [next(it) for _ in range(st.accum)]  # on the device (trainer/prefetch)
            self.ev.progress(phase="train")
            nxt = st.step + 1 + len(out.in_flight)  # if the step in flight is applied
            if out.in_flight and self.faults.near(nxt):
                out.settle()
                nxt = st.step + 1
            self.faults.inject(nxt, st.micro)
            e_float = st.progress()
            lr, mom = st.schedule.lr_at(e_float), st.schedule.ema_at(e_float)
            log_now = nxt == 1 or nxt % cfg.logging.log_frequency == 0
            pending = self.step_fn.launch(
                micro,
                lr=lr,
                momentum=mom,
                grad_norms=log_now and cfg.logging.log_gradients,
                extra=self.control.sync_out(self.checkpointer.clock_due())
                if self.dist.world > 1
                else None,
            )
            self.step_fn.poison_next = self.step_fn.overflow_next = False
            st.samples_in_epoch += st.eff  # a skipped step consumes its batch too
            if f.step_delay_s:
                time.sleep(f.step_delay_s)
            out.settle()  # the previous step, read while this one runs
            out.launched(pending, lr, mom, time.monotonic() - t_step)
            self.ev.step_s = out.step_s()
            mid_epoch = st.samples_in_epoch < st.epoch_size
            if mid_epoch and ((every and nxt % every == 0) or self.save_due()):
                applied = out.settle()
                if applied and every and st.step % every == 0:
                    self.save("steps")
                elif self.save_due():
                    self.save("time")
            if self.dist.world == 1:
                self.control.poll_alone(st)
            if self.cpu_threads is not None:
                self.cpu_threads.tick()
            if self.control.stop_flag:
                out.settle()
                raise StopRequestedError(self.control.stop_flag)
        out.settle()
        losses = out.epoch_losses
        self.ev.emit(
            EpochEnd(
                epoch=epoch,
                seconds=time.monotonic() - t_epoch,
                steps=len(losses),
                total_epochs=st.total_epochs,
                mean_loss=sum(losses) / len(losses) if losses else None,
            )
        )

    def save_due(self) -> bool:
        """A time checkpoint is due: this process's timer alone; with several ranks the
        agreement read with the last step (every rank's timer, ``ControlChannel.sync_in``), so
        all ranks settle and save at the same step."""
        if self.dist.world == 1:
            return self.checkpointer.clock_due()
        return self.control.save_agreed

    def save(self, reason: str) -> Saved:
        """A checkpoint now (``Checkpointer.save``); an agreed time checkpoint is spent."""
        self.control.saved()
        return self.checkpointer.save(reason)

    # ---------------------------------------------------------------------------------- run
    def run(self) -> int:
        self.setup()
        self.resume()
        self.started()
        st, control = self.state, self.control
        try:
            if st.at_start() and self.cfg.evaluation.eval_at_start:
                self.evaluator.evaluate_main(0)
            final = None  # the last epoch's checkpoint: the end-of-run pictures' fallback
            while st.epoch <= st.total_epochs:
                self.train_epoch()
                done = st.epoch
                last = done >= st.total_epochs
                res = None
                if should_eval(done, st.total_epochs, self.cfg.evaluation.eval_frequency):
                    res = self.evaluator.evaluate_main(done)
                if last or should_save(done, st.total_epochs, self.cfg.experiment.save_frequency):
                    saved = self.save("final" if last else "epoch")
                    final = saved.path if last and saved.verified else None
                    if res is not None:
                        self.checkpointer.track_best(res, saved)
                elif self.save_due():
                    saved = self.save("time")
                    if res is not None:
                        self.checkpointer.track_best(res, saved)
                if not last:
                    st.epoch, st.samples_in_epoch = done + 1, 0
                else:
                    break
                control.sync_control(st, self.device, self.checkpointer.clock_due())
                if control.stop_flag:
                    raise StopRequestedError(control.stop_flag)
        except StopRequestedError:
            saved = self.save("stop")
            if control.final_eval_on_stop:
                res = self.evaluator.evaluate_main(st.epoch)
                if res is not None:
                    self.checkpointer.track_best(res, saved)
                # the night's end
                self.evaluator.end_pictures(saved.path if saved.verified else None)
            self.ev.emit(
                Finished(
                    reason="stopped",
                    epoch=st.epoch,
                    step=st.step,
                    seconds=time.monotonic() - self.t0,
                )
            )
            return EXIT_STOPPED
        self.evaluator.end_pictures(final)
        self.ev.emit(
            Finished(
                reason="completed",
                epoch=st.epoch,
                step=st.step,
                seconds=time.monotonic() - self.t0,
            )
        )
        return EXIT_OK
