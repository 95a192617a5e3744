"""The worker's training loop: setup → resume → epochs (steps, control, evals, checkpoints) → end.

    worker = Worker(cfg, run_dir, resume="auto", emitter=emitter)
    code = worker.run()          # an exit code from trainer.events

Phases are short named methods. Signals only set a flag; the loop checkpoints at the next step
boundary and exits ``EXIT_STOPPED``. The control file is polled at step boundaries (one
``os.stat`` per step). Every failure ends in a ``fatal`` event with its kind and the matching
exit code (see ``trainer/events.py``).

Contracts kept here:
- A batch whose gradients overflow (loss finite) is a SKIPPED step: it consumes its batch (the
  data position moves on, so a resume replays nothing) but not a step number (``step`` counts
  optimizer steps taken). It is counted in ``step`` events (``overflow_steps``, cumulative this
  attempt; ``loss_scale``); more than ``training.max_consecutive_overflows`` in a row, or a
  non-finite loss, is fatal ``nonfinite``.
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

import json
import os
import random
import signal
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainer import checkpoints as ckpt
from trainer.allocator import keep_freed_memory
from trainer.config import Config
from trainer.data import build_eval_data, build_train_data, train_loader
from trainer.device import memory_readings, select_device, select_precision
from trainer.emitter import Emitter
from trainer.evaluation import EvalResult, evaluate
from trainer.events import (
    CHECKPOINT_DIR,
    EXIT_OK,
    EXIT_STOPPED,
    FAULTS_FIRED_FILE,
    Best,
    Checkpoint,
    CheckpointRejected,
    ControlApplied,
    EpochEnd,
    Eval,
    Finished,
    Resumed,
    ResumePartial,
    Started,
    Step,
    atomic_write_text,
    read_control,
)
from trainer.faults import set_injected_feature
from trainer.masks import MaskCollator
from trainer.model import build_model, compile_model
from trainer.resume import load_model_state, load_optimizer_state, optimizer_param_names
from trainer.schedules import make_schedule, schedule_from_state, should_eval, should_save
from trainer.step import NonFiniteLossError, TrainStep


class StopRequestedError(Exception):
    pass


class Worker:
    def __init__(self, cfg: Config, run_dir: Path, resume: str | None, emitter: Emitter) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume_request = resume
        self.ev = emitter
        self.stop_flag: str | None = None  # set by signal handlers / control file
        self.final_eval_on_stop = False
        self.control_seq = -1
        self._control_mtime = 0.0
        self.t0 = time.monotonic()

    # ------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg = self.cfg
        _seed_everything(cfg.experiment.seed)
        self.device = select_device(cfg.device)
        self.precision = select_precision(self.device, cfg.training.use_amp,
                                          cfg.training.precision)
        self.ev.progress(phase="data")
        self.train_data = build_train_data(cfg)
        self.eval_data = build_eval_data(cfg)
        self.model = build_model(cfg).to(self.device)
        keep_freed_memory(self.device)  # CPU: no page faults on every step's buffers
        if cfg.training.compile:
            compile_model(self.model, self.device)  # ConfigError where it cannot work
        self.step_fn = TrainStep(self.model, cfg, self.device, self.precision)
        self.masks = MaskCollator(
            cfg.masking, cfg.data.image_size, cfg.model.patch_size, seed=cfg.experiment.seed
        )
        self.micro = cfg.data.batch_size
        self.accum = cfg.training.accumulation_steps
        self.eff = self.micro * self.accum
        self.epoch_size = self.train_data.epoch_size
        if self.epoch_size < self.eff:
            raise ValueError(
                f"epoch size {self.epoch_size} is smaller than the effective batch {self.eff}"
            )
        self.steps_per_epoch = self.epoch_size // self.eff
        self.schedule = make_schedule(cfg)
        self.writer = ckpt.CheckpointWriter(
            self.run_dir / CHECKPOINT_DIR, cfg.checkpoint.keep_last_k
        )
        self.epoch = 1  # epoch in progress (1-based)
        self.samples_in_epoch = 0
        self.step = 0  # optimizer steps completed
        self.best: float | None = None
        self.resumed_from: str | None = None
        self.fired = self._load_fired()
        f = cfg.faults
        set_injected_feature(f.raise_in_feature if f.raise_in_feature_after_step is None
                             else None)
        self.overflow_steps = 0  # skipped for gradient overflow, this attempt
        self.overflow_run = 0  # consecutive ones
        self._overflow_fault_left = 0
        self.step_times: deque[float] = deque(maxlen=20)
        self.last_save = time.monotonic()

    @property
    def total_epochs(self) -> int:
        """The total in force (after every epoch cut)."""
        return self.schedule.total_epochs

    def progress(self) -> float:
        """Epochs done, as a float (the schedules' clock)."""
        return (self.epoch - 1) + self.samples_in_epoch / self.epoch_size

    def _load_fired(self, extra_dir: Path | None = None) -> set[str]:
        fired: set[str] = set()
        for d in filter(None, [self.run_dir, extra_dir]):
            p = d / FAULTS_FIRED_FILE
            if p.exists():
                fired |= set(json.loads(p.read_text()))
        return fired

    def _mark_fired(self, name: str) -> None:
        self.fired.add(name)
        atomic_write_text(self.run_dir / FAULTS_FIRED_FILE, json.dumps(sorted(self.fired)))

    # ------------------------------------------------------------------------------ resume
    def resume(self) -> None:
        if not self.resume_request:
            return
        self.ev.progress(phase="checkpoint")

        def reject(path: Path, reason: str) -> None:
            self.ev.emit(CheckpointRejected(path=str(path), reason=reason))

        path, state = ckpt.resolve(self.resume_request, self.run_dir / CHECKPOINT_DIR, reject)
        off = {name for name, status in self.model.feature_status().items()
               if status.startswith("off")}
        report = load_model_state(self.model, state["model"], off)
        opt = load_optimizer_state(self.step_fn.optimizer, state, self.model, report.partial)
        if report.partial or opt == "reset":
            what = f"features off: {', '.join(sorted(off)) or 'none'}"
            self.ev.emit(ResumePartial(
                path=str(path), dropped=report.dropped, missing=report.missing, optimizer=opt,
                message=f"loaded every key that fits ({what}); {len(report.dropped)} dropped, "
                f"{len(report.missing)} missing; optimizer state {opt}"))
        if self.step_fn.scaler is not None and state.get("scaler"):
            self.step_fn.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.samples_in_epoch = int(state["samples_in_epoch"])
        self.best = state.get("best")
        _set_rng(state["rng"])
        # A previous attempt's one-shot faults stay fired (the fault "passes" on restart).
        self.fired |= self._load_fired(path.parent.parent)
        if self.fired:
            atomic_write_text(self.run_dir / FAULTS_FIRED_FILE, json.dumps(sorted(self.fired)))
        if self.samples_in_epoch + self.eff > self.epoch_size:  # epoch was complete
            self.epoch, self.samples_in_epoch = self.epoch + 1, 0
        self.resume_schedule(state)
        self.resumed_from = str(path)
        self.ev.emit(Resumed(path=str(path), epoch=self.epoch, step=self.step,
                             samples_in_epoch=self.samples_in_epoch))

    def resume_schedule(self, state: dict[str, Any]) -> None:
        """The checkpoint's curve; a cut at the resume position if training.epochs differs."""
        legacy_total = int(state.get("total_epochs", self.cfg.training.epochs))
        self.schedule = schedule_from_state(self.cfg, state.get("schedule"), legacy_total)
        wanted = self.cfg.training.epochs
        if wanted != self.schedule.total_epochs:
            done = self.epoch - 1 if self.samples_in_epoch == 0 else self.epoch
            self.schedule = self.schedule.with_cut(self.progress(), max(wanted, done))

    # ------------------------------------------------------------------------------- events
    def started(self) -> None:
        n_total = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.ev.emit(Started(
            pid=os.getpid(), config_hash=self.cfg.hash(), device=str(self.device),
            precision=self.precision.name, params_total=n_total, params_trainable=n_train,
            features=self.model.feature_status(), micro_batch=self.micro,
            accum_steps=self.accum, epochs=self.total_epochs,
            steps_per_epoch=self.steps_per_epoch, epoch_size=self.epoch_size,
            datasets=dict(self.train_data.sizes) if self.cfg.logging.log_dataset_distribution
            else {}, start_epoch=self.epoch, start_step=self.step,
            resumed_from=self.resumed_from,
        ))

    def mem(self) -> dict[str, int]:
        return memory_readings(self.device)

    # ------------------------------------------------------------------------------ control
    def on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_flag = signal.Signals(signum).name

    def poll_control(self) -> None:
        path = self.run_dir / "control.json"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._control_mtime:
            return
        self._control_mtime = mtime
        ctl = read_control(self.run_dir)
        if ctl is None or ctl.seq <= self.control_seq:
            return
        self.control_seq = ctl.seq
        applied = []
        if ctl.epochs is not None:
            floor = self.epoch  # never below the epoch in progress
            new_total = max(ctl.epochs, floor)
            if new_total != self.total_epochs:
                self.schedule = self.schedule.with_cut(self.progress(), new_total)
            floored = " (floored)" if new_total != ctl.epochs else ""
            applied.append(f"epochs → {new_total}{floored}")
        if ctl.stop:
            self.stop_flag = "control"
            self.final_eval_on_stop = ctl.final_eval
            applied.append("stop" + (" after final eval" if ctl.final_eval else ""))
        self.ev.emit(ControlApplied(seq=ctl.seq, epochs=ctl.epochs, stop=ctl.stop,
                                    applied=", ".join(applied)))

    # ------------------------------------------------------------------------------- data
    def loader(self, epoch: int, start: int) -> DataLoader:
        return train_loader(self.cfg, self.train_data, self.masks, epoch, start, self.device)

    # ------------------------------------------------------------------------------- train
    def train_epoch(self) -> None:
        cfg, f = self.cfg, self.cfg.faults
        epoch, start = self.epoch, self.samples_in_epoch
        t_epoch = time.monotonic()
        losses: list[float] = []
        self.model.train()
        # "loader" until the first batch of the epoch arrives (workers starting), then "data".
        self.ev.progress(phase="loader", epoch=epoch, step=self.step)
        it = iter(self.loader(epoch, start))
        steps_left = (self.epoch_size - start) // self.eff
        t_log, n_log = time.monotonic(), 0
        for i in range(steps_left):
            t_step = time.monotonic()
            if i:
                self.ev.progress(phase="data", epoch=epoch, step=self.step)
            micro = [next(it).to(self.device, non_blocking=True) for _ in range(self.accum)]
            self.ev.progress(phase="train")
            nxt = self.step + 1
            self.inject_faults(nxt, micro)
            e_float = self.progress()
            lr, mom = self.schedule.lr_at(e_float), self.schedule.ema_at(e_float)
            log_now = nxt == 1 or nxt % cfg.logging.log_frequency == 0
            res = self.step_fn(micro, lr=lr, momentum=mom,
                               grad_norms=log_now and cfg.logging.log_gradients)
            self.step_fn.poison_next = self.step_fn.overflow_next = False
            if not res.finite:
                raise NonFiniteLossError(
                    f"non-finite loss at step {nxt} (loss={res.loss}, grad_norm={res.grad_norm}); "
                    "optimizer step skipped"
                )
            self.samples_in_epoch += self.eff  # a skipped step consumes its batch too
            if f.step_delay_s:
                time.sleep(f.step_delay_s)
            self.step_times.append(time.monotonic() - t_step)
            self.ev.step_s = self.step_s()
            if res.overflow:
                self.on_overflow(nxt, res.grad_norm)
            else:
                self.overflow_run = 0
                self.step = nxt
                losses.append(res.loss)
                n_log += self.eff
                self.ev.progress(epoch=epoch, step=self.step)
                if log_now:
                    dt = max(time.monotonic() - t_log, 1e-9)
                    self.emit_step(res, lr, n_log / dt)
                    t_log, n_log = time.monotonic(), 0
                mid_epoch = self.samples_in_epoch < self.epoch_size
                every = cfg.checkpoint.every_n_steps
                if every and self.step % every == 0 and mid_epoch:
                    self.save("steps")
                elif mid_epoch and self.save_due():
                    self.save("time")
            self.poll_control()
            if self.stop_flag:
                raise StopRequestedError(self.stop_flag)
        self.ev.emit(EpochEnd(epoch=epoch, seconds=time.monotonic() - t_epoch,
                              steps=len(losses), total_epochs=self.total_epochs,
                              mean_loss=sum(losses) / len(losses) if losses else None))

    def step_s(self) -> float | None:
        """Recent seconds per step: the median of the last 20 (data wait included)."""
        return round(statistics.median(self.step_times), 4) if self.step_times else None

    def save_due(self) -> bool:
        minutes = self.cfg.checkpoint.every_minutes
        return minutes is not None and time.monotonic() - self.last_save >= 60.0 * minutes

    def on_overflow(self, nxt: int, grad_norm: float) -> None:
        """A skipped step (finite loss, non-finite gradients): counted; too many in a row is
        fatal."""
        self.overflow_steps += 1
        self.overflow_run += 1
        limit = self.cfg.training.max_consecutive_overflows
        if self.overflow_run > limit:
            raise NonFiniteLossError(
                f"{self.overflow_run} consecutive gradient overflows at step {nxt} "
                f"(grad_norm={grad_norm}, loss finite) > training.max_consecutive_overflows="
                f"{limit}; {self.overflow_steps} overflow step(s) skipped this attempt"
            )

    def emit_step(self, res: Any, lr: float, img_per_s: float) -> None:
        event = Step(
            epoch=self.epoch, step=self.step, loss=res.loss, loss_levels=res.levels,
            loss_parts=res.parts, grad_norm=res.grad_norm, lr=lr, img_per_s=img_per_s,
            micro_batch=self.micro, accum_steps=self.accum, device_mem=self.mem(),
            step_s=self.step_s(), overflow_steps=self.overflow_steps,
            loss_scale=self.step_fn.loss_scale(),
        )
        if res.grad_norms is not None:
            event.grad_norms = res.grad_norms  # type: ignore[attr-defined]
        self.ev.emit(event)

    def inject_faults(self, nxt: int, micro: list[Any]) -> None:
        f = self.cfg.faults
        if f.oom_above_micro_batch is not None and self.micro > f.oom_above_micro_batch:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (injected: micro-batch "
                f"{self.micro} > faults.oom_above_micro_batch={f.oom_above_micro_batch})"
            )
        if f.oom_at_step == nxt and "oom" not in self.fired:
            self._mark_fired("oom")
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (injected: "
                f"faults.oom_at_step={nxt})"
            )
        if f.raise_in_feature and f.raise_in_feature_after_step is not None and \
                nxt >= f.raise_in_feature_after_step:
            set_injected_feature(f.raise_in_feature)
        if f.nonfinite_at_step == nxt and "nonfinite" not in self.fired:
            self._mark_fired("nonfinite")
            self.step_fn.poison_next = True
        if f.grad_overflow_at_step == nxt and "grad_overflow" not in self.fired:
            self._mark_fired("grad_overflow")
            self._overflow_fault_left = f.grad_overflow_steps
        if self._overflow_fault_left > 0:
            self._overflow_fault_left -= 1
            self.step_fn.overflow_next = True
        if f.hang_at_step == nxt and "hang" not in self.fired:
            self._mark_fired("hang")
            self.ev.beat()  # the phase it hangs in (train) is known, then silence
            self.ev.freeze()
            while True:  # stuck: no progress, no heartbeat, until killed
                time.sleep(3600)

    # ------------------------------------------------------------------------------- eval
    def evaluate(self, epoch: int) -> EvalResult:
        self.ev.progress(phase="eval", epoch=epoch, step=self.step)
        hb = lambda: self.ev.progress(phase="eval")  # noqa: E731
        res = evaluate(self.model, self.cfg, self.eval_data, self.device, heartbeat=hb,
                       val_loss_fn=self.val_loss if self.cfg.checkpoint.metric == "val_loss"
                       else None)
        self.ev.emit(Eval(epoch=epoch, knn=res.knn, linear_probe=res.linear_probe,
                          feature_std=res.feature_std, effective_rank=res.effective_rank,
                          val_loss=res.val_loss, seconds=res.seconds,
                          num_samples=res.num_samples))
        if self.cfg.logging.log_images:
            self.save_mask_image(epoch)
        self.ev.progress(phase="train")
        return res

    @torch.no_grad()
    def save_mask_image(self, epoch: int) -> Path:
        """logging.log_images: 8 held-out images with context kept and targets tinted red."""
        from torchvision.utils import save_image

        _, test = self.eval_data
        items = [test[i] for i in range(min(8, len(test)))]
        if self.cfg.loss.use_contrastive:
            items = [((x, x), y) for x, y in items]
        masks = MaskCollator(self.cfg.masking, self.cfg.data.image_size,
                             self.cfg.model.patch_size, seed=epoch)
        batch = masks(items)
        img = batch.images.clone()
        lo, hi = img.amin(dim=(1, 2, 3), keepdim=True), img.amax(dim=(1, 2, 3), keepdim=True)
        img = (img - lo) / (hi - lo + 1e-6)
        p = self.cfg.model.patch_size
        grid = self.cfg.data.image_size // p
        keep = torch.zeros(len(img), grid * grid)
        keep.scatter_(1, batch.ctx_idx.cpu(), 1.0)
        tgt = torch.zeros(len(img), grid * grid)
        tgt.scatter_(1, batch.tgt_idx.flatten(1).cpu(), 1.0)
        up = lambda m: m.view(-1, 1, grid, grid).repeat_interleave(p, 2).repeat_interleave(p, 3)  # noqa: E731
        out = img * (0.25 + 0.75 * up(keep))
        red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
        out = torch.where(up(tgt).bool(), 0.5 * out + 0.5 * red, out)
        path = self.run_dir / "images" / f"masks-e{epoch:04d}.png"
        path.parent.mkdir(exist_ok=True)
        save_image(out, path, nrow=8)
        return path

    @torch.no_grad()
    def val_loss(self) -> float:
        """Mean training objective on held-out images (fixed masks), for checkpoint.metric."""
        _, test = self.eval_data
        masks = MaskCollator(self.cfg.masking, self.cfg.data.image_size,
                             self.cfg.model.patch_size, seed=12345)
        was = self.model.training
        self.model.eval()
        n = min(len(test), 4 * self.micro)
        items = [test[i] for i in range(n)]
        total, count = 0.0, 0
        for i in range(0, n - self.micro + 1, self.micro):
            chunk = items[i : i + self.micro]
            if self.cfg.loss.use_contrastive:
                chunk = [((x, x), y) for x, y in chunk]
            batch = masks(chunk).to(self.device)
            total += float(self.model(batch).total)
            count += 1
            self.ev.progress(phase="eval")
        self.model.train(was)
        return total / max(count, 1)

    def track_best(self, res: EvalResult, saved: ckpt.Saved) -> None:
        """best.pt ← ``saved`` when it is better by checkpoint.metric/mode (and verified); a
        ``best`` event names it."""
        c = self.cfg.checkpoint
        if not c.save_best or not saved.verified:
            return
        value = {"val_loss": res.val_loss, "knn": res.knn.get("20"),
                 "linear_probe": res.linear_probe}[c.metric]
        if value is None:
            return
        better = self.best is None or (value < self.best if c.mode == "min" else value > self.best)
        if better:
            self.best = value
            self.writer.mark_best(saved.path, c.metric, value)
            self.ev.emit(Best(path=str(saved.path), metric=c.metric, value=float(value),
                              epoch=self.epoch, step=self.step))

    # -------------------------------------------------------------------------- checkpoint
    def save(self, reason: str) -> ckpt.Saved:
        """Checkpoint the complete training state (reason: epoch|steps|time|stop|final)."""
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
            "rng": _get_rng(),
            "config": self.cfg.to_yaml_dict(),
        }
        meta = {"epoch": self.epoch, "step": self.step, "samples_in_epoch": self.samples_in_epoch,
                "config_hash": self.cfg.hash(), "reason": reason,
                "micro_batch": self.micro, "accum_steps": self.accum,
                "total_epochs": self.total_epochs}
        saved = self.writer.save(state, meta)
        self.last_save = time.monotonic()
        event = Checkpoint(path=str(saved.path), epoch=self.epoch, step=self.step,
                           verified=saved.verified, seconds=time.monotonic() - t, reason=reason)
        if saved.problem:
            event.problem = saved.problem  # type: ignore[attr-defined]
        self.ev.emit(event)
        self.ev.progress(phase="train")
        return saved

    # ---------------------------------------------------------------------------------- run
    def run(self) -> int:
        self.setup()
        self.resume()
        self.started()
        try:
            if self.step == 0 and self.samples_in_epoch == 0 and self.epoch == 1 and \
                    self.cfg.evaluation.eval_at_start:
                self.evaluate(0)
            while self.epoch <= self.total_epochs:
                self.train_epoch()
                done = self.epoch
                last = done >= self.total_epochs
                res = None
                if should_eval(done, self.total_epochs, self.cfg.evaluation.eval_frequency):
                    res = self.evaluate(done)
                if last or should_save(done, self.total_epochs,
                                       self.cfg.experiment.save_frequency):
                    saved = self.save("final" if last else "epoch")
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
                self.poll_control()
                if self.stop_flag:
                    raise StopRequestedError(self.stop_flag)
        except StopRequestedError:
            saved = self.save("stop")
            if self.final_eval_on_stop:
                res = self.evaluate(self.epoch)
                self.track_best(res, saved)
            self.ev.emit(Finished(reason="stopped", epoch=self.epoch, step=self.step,
                                  seconds=time.monotonic() - self.t0))
            return EXIT_STOPPED
        self.ev.emit(Finished(reason="completed", epoch=self.epoch, step=self.step,
                              seconds=time.monotonic() - self.t0))
        return EXIT_OK

    def eval_only(self) -> int:
        self.setup()
        if not self.resume_request:
            raise ckpt.NoCheckpointError("--eval-only needs --resume PATH|auto")
        self.resume()
        self.started()
        epoch = self.epoch - 1 if self.samples_in_epoch == 0 else self.epoch
        self.evaluate(epoch)
        self.ev.emit(Finished(reason="completed", epoch=epoch, step=self.step,
                              seconds=time.monotonic() - self.t0))
        return EXIT_OK

    def probe(self, steps: int, warmup: int = 2) -> dict[str, float]:
        """Time ``steps`` optimizer steps after ``warmup`` (data loading included)."""
        self.setup()
        self.model.train()
        it = iter(self.loader(1, 0))
        times = []
        for i in range(warmup + steps):
            t = time.monotonic()
            micro = [next(it).to(self.device) for _ in range(self.accum)]
            self.step_fn(micro, lr=self.schedule.lr_at(0.0), momentum=self.schedule.ema_at(0.0))
            if i >= warmup:
                times.append(time.monotonic() - t)
            self.ev.progress(phase="train", step=i + 1)
        ms = 1000 * sum(times) / len(times)
        return {"ms_per_step": ms, "steps_per_epoch": self.steps_per_epoch,
                "epoch_seconds": ms / 1000 * self.steps_per_epoch,
                "img_per_s": self.eff / (ms / 1000), "device": str(self.device),
                "micro_batch": self.micro, "accum_steps": self.accum, "memory": self.mem()}


# ---------------------------------------------------------------------------------- RNG
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _get_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
