"""The worker's training loop: setup → resume → epochs (steps, control, evals, checkpoints) → end.

    worker = Worker(cfg, run_dir, resume="auto", emitter=emitter)
    code = worker.run()          # an exit code from trainer.events

Phases are short named methods. :class:`Worker` holds the epoch loop and the worker's modes
(``run``, ``eval_only``, ``probe``); its parts live beside it, one module each:

- ``trainer/train_state.py`` (:class:`TrainState`): the position, resume, checkpoint, best, RNG;
- ``trainer/control_poll.py`` (:class:`ControlPolling`): signals and the control file;
- ``trainer/faults.py`` (:class:`FaultInjection`): the ``faults.*`` test aids, per step;
- ``trainer/eval_phase.py`` (:class:`EvalPhase`): the ``eval`` event, val loss, mask image;
- ``trainer/modes.py`` (:class:`OtherModes`): ``--eval-only`` and ``--probe``;
- ``trainer/step_outcome.py`` (:class:`StepOutcomes`): a launched step's outcome, read later;
- ``trainer/dist.py`` (:class:`Dist`): rank and world size under the launcher. With several
  ranks the model trains under DDP, the recipe's batch is shared (``per_rank_batch``): ``eff``
  is the global batch (micro × accumulation × world = data.batch_size × accumulation),
  the position counts global samples, rank 0 alone writes events, checkpoints and evaluates,
  and every decision a rank could take alone (stop, control, a time checkpoint) is agreed in
  the step's all-reduce (``ControlPolling.sync_*``): no rank acts on what only it has seen.

Signals only set a flag; the loop checkpoints at the next agreed step boundary and exits
``EXIT_STOPPED``. The control file is polled at step boundaries (one ``os.stat`` per step).
Every failure ends in a ``fatal`` event with its kind and the matching exit code (see
``trainer/events.py``).

Contracts kept here:
- Steps are pipelined: step N+1 is launched before step N's numbers are read; what a step
  meant (applied, skipped for overflow, non-finite) is handled one step late by
  ``trainer/step_outcome.py`` (:class:`StepOutcomes`), which holds the overflow and logging
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
from collections import deque
from pathlib import Path

from torch.utils.data import DataLoader

from trainer import checkpoints as ckpt
from trainer.allocator import keep_freed_memory
from trainer.config import Config, write_resolved
from trainer.control_poll import ControlPolling
from trainer.cpu_threads import CpuThreads
from trainer.data import TrainLoader, build_eval_data, build_train_data
from trainer.device import memory_readings, select_device, select_precision
from trainer.dist import Dist, per_rank_batch, wrap_ddp
from trainer.emitter import Emitter
from trainer.eval_phase import EvalPhase
from trainer.events import (
    CHECKPOINT_DIR,
    EXIT_OK,
    EXIT_STOPPED,
    RESOLVED_CONFIG_FILE,
    EpochEnd,
    Finished,
    Started,
)
from trainer.faults import FaultInjection, require_gradients, set_injected_feature
from trainer.health import HealthMonitor
from trainer.masks import MaskCollator
from trainer.model import build_model, compile_model
from trainer.modes import OtherModes
from trainer.prefetch import DevicePrefetch
from trainer.schedules import make_schedule, should_eval, should_save
from trainer.step import TrainStep
from trainer.step_outcome import InFlight, StepOutcomes
from trainer.train_state import TrainState, seed_everything


class StopRequestedError(Exception):
    pass


class Worker(TrainState, StepOutcomes, ControlPolling, FaultInjection, EvalPhase, OtherModes):
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
        self.signal_seen: str | None = None  # set by the signal handlers: this process only
        self.stop_flag: str | None = None  # an agreed stop (a signal or the control file)
        self.save_agreed = False  # several ranks: a time checkpoint agreed in the last step
        self.final_eval_on_stop = False
        self.control_seq = -1
        self._control_mtime = 0.0
        self.t0 = time.monotonic()
        self.cpu_threads: CpuThreads | None = None  # set in setup on a CPU device

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
        self.epoch_size = self.train_data.epoch_size
        self.set_batch(
            *per_rank_batch(cfg.data.batch_size, cfg.training.accumulation_steps, self.dist.world)
        )
        self.schedule = make_schedule(cfg)
        self.writer = ckpt.CheckpointWriter(
            self.run_dir / CHECKPOINT_DIR, cfg.checkpoint.keep_last_k
        )
        self.epoch = 1  # epoch in progress (1-based)
        self.samples_in_epoch = 0
        self.step = 0  # optimizer steps completed
        self.best: float | None = None
        self.resumed_from: str | None = None
        self.fired = self.dist.broadcast(self.load_fired())  # the writer's, on every node
        f = cfg.faults
        set_injected_feature(f.raise_in_feature if f.raise_in_feature_after_step is None else None)
        self.overflow_steps = 0  # skipped for gradient overflow, this attempt
        self.overflow_run = 0  # consecutive ones
        self._overflow_fault_left = 0
        self.step_times: deque[float] = deque(maxlen=20)
        self.last_save = time.monotonic()
        self.health = HealthMonitor(cfg.logging.health_every_steps, self.ev.emit)
        if self.cpu_threads is not None:  # the set-up's seconds are the first sample
            self.cpu_threads.decide_now()

    def set_batch(self, micro: int, accum: int) -> None:
        """Micro-batch and accumulation of ONE rank; ``eff`` is the global batch of a step
        (micro × accum × world = the recipe's data.batch_size × accumulation_steps)."""
        self.micro, self.accum = micro, accum
        self.eff = micro * accum * self.dist.world
        if self.epoch_size < self.eff:
            raise ValueError(
                f"epoch size {self.epoch_size} is smaller than the effective batch {self.eff}"
            )
        self.steps_per_epoch = self.epoch_size // self.eff

    # ------------------------------------------------------------------------------- events
    def started(self) -> None:
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
                micro_batch=self.micro,
                accum_steps=self.accum,
                world_size=self.dist.world,
                global_batch=self.eff,
                epochs=self.total_epochs,
                steps_per_epoch=self.steps_per_epoch,
                epoch_size=self.epoch_size,
                datasets=dict(self.train_data.sizes)
                if self.cfg.logging.log_dataset_distribution
                else {},
                start_epoch=self.epoch,
                start_step=self.step,
                resumed_from=self.resumed_from,
            )
        )

    def mem(self) -> dict[str, int]:
        return memory_readings(self.device)

    # ------------------------------------------------------------------------------- data
    def loader(self, epoch: int, start: int) -> DataLoader:
        """Epoch ``epoch`` from sample ``start``: one TrainLoader per attempt and batch shape,
        so its workers persist across epochs."""
        d, key = self.dist, (self.micro, self.accum)
        if getattr(self, "_loader_key", None) != key:
            self._train_loader = TrainLoader(
                self.cfg,
                self.train_data,
                self.masks,
                self.device,
                d.rank,
                d.world,
                self.micro,
                self.accum,
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
        cfg, f = self.cfg, self.cfg.faults
        epoch, start = self.epoch, self.samples_in_epoch
        t_epoch = time.monotonic()
        self.epoch_losses: list[float] = []
        self.in_flight: list[InFlight] = []
        self.model.train()
        # "loader" until the first batch of the epoch arrives (workers starting), then "data".
        self.ev.progress(phase="loader", epoch=epoch, step=self.step)
        it = DevicePrefetch(iter(self.loader(epoch, start)), self.device)
        steps_left = (self.epoch_size - start) // self.eff
        self.t_log, self.n_log = time.monotonic(), 0
        every = cfg.checkpoint.every_n_steps
        for i in range(steps_left):
            t_step = time.monotonic()
            if i:
                self.ev.progress(phase="data", epoch=epoch, step=self.step)
            micro = [next(it) for _ in range(self.accum)]  # on the device (trainer/prefetch)
            self.ev.progress(phase="train")
            nxt = self.step + 1 + len(self.in_flight)  # if the step in flight is applied
            if self.in_flight and self.fault_near(nxt):
                self.settle()
                nxt = self.step + 1
            self.inject_faults(nxt, micro)
            e_float = self.progress()
            lr, mom = self.schedule.lr_at(e_float), self.schedule.ema_at(e_float)
            log_now = nxt == 1 or nxt % cfg.logging.log_frequency == 0
            pending = self.step_fn.launch(
                micro,
                lr=lr,
                momentum=mom,
                grad_norms=log_now and cfg.logging.log_gradients,
                extra=self.sync_out() if self.dist.world > 1 else None,
            )
            self.step_fn.poison_next = self.step_fn.overflow_next = False
            self.samples_in_epoch += self.eff  # a skipped step consumes its batch too
            if f.step_delay_s:
                time.sleep(f.step_delay_s)
            self.settle()  # the previous step, read while this one runs
            self.in_flight.append(InFlight(pending, lr, mom))
            self.step_times.append(time.monotonic() - t_step)
            self.ev.step_s = self.step_s()
            mid_epoch = self.samples_in_epoch < self.epoch_size
            if mid_epoch and ((every and nxt % every == 0) or self.save_due()):
                applied = self.settle()
                if applied and every and self.step % every == 0:
                    self.save("steps")
                elif self.save_due():
                    self.save("time")
            if self.dist.world == 1:
                self.poll_alone()
            if self.cpu_threads is not None:
                self.cpu_threads.tick()
            if self.stop_flag:
                self.settle()
                raise StopRequestedError(self.stop_flag)
        self.settle()
        losses = self.epoch_losses
        self.ev.emit(
            EpochEnd(
                epoch=epoch,
                seconds=time.monotonic() - t_epoch,
                steps=len(losses),
                total_epochs=self.total_epochs,
                mean_loss=sum(losses) / len(losses) if losses else None,
            )
        )

    def save_due(self) -> bool:
        """A time checkpoint is due: this process's timer alone; with several ranks the
        agreement read with the last step (every rank's timer, ``ControlPolling.sync_in``), so
        all ranks settle and save at the same step."""
        return self.clock_due() if self.dist.world == 1 else self.save_agreed

    def clock_due(self) -> bool:
        """This process's timer: ``checkpoint.every_minutes`` since its last save."""
        minutes = self.cfg.checkpoint.every_minutes
        return minutes is not None and time.monotonic() - self.last_save >= 60.0 * minutes

    # ---------------------------------------------------------------------------------- run
    def run(self) -> int:
        self.setup()
        self.resume()
        self.started()
        try:
            if (
                self.step == 0
                and self.samples_in_epoch == 0
                and self.epoch == 1
                and self.cfg.evaluation.eval_at_start
            ):
                self.evaluate_main(0)
            final = None  # the last epoch's checkpoint: the end-of-run pictures' fallback
            while self.epoch <= self.total_epochs:
                self.train_epoch()
                done = self.epoch
                last = done >= self.total_epochs
                res = None
                if should_eval(done, self.total_epochs, self.cfg.evaluation.eval_frequency):
                    res = self.evaluate_main(done)
                if last or should_save(done, self.total_epochs, self.cfg.experiment.save_frequency):
                    saved = self.save("final" if last else "epoch")
                    final = saved.path if last and saved.verified else None
                    if res is not None:
                        self.track_best(res, saved)
                elif self.save_due():
                    saved = self.save("time")
                    if res is not None:
                        self.track_best(res, saved)
                if not last:
                    self.epoch, self.samples_in_epoch = done + 1, 0
                else:
                    break
                self.sync_control()
                if self.stop_flag:
                    raise StopRequestedError(self.stop_flag)
        except StopRequestedError:
            saved = self.save("stop")
            if self.final_eval_on_stop:
                res = self.evaluate_main(self.epoch)
                if res is not None:
                    self.track_best(res, saved)
                self.end_pictures(saved.path if saved.verified else None)  # the night's end
            self.ev.emit(
                Finished(
                    reason="stopped",
                    epoch=self.epoch,
                    step=self.step,
                    seconds=time.monotonic() - self.t0,
                )
            )
            return EXIT_STOPPED
        self.end_pictures(final)
        self.ev.emit(
            Finished(
                reason="completed",
                epoch=self.epoch,
                step=self.step,
                seconds=time.monotonic() - self.t0,
            )
        )
        return EXIT_OK
