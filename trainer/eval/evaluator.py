"""The worker's evaluation phase: the ``eval`` event, the held-out loss and the mask image.

:class:`Evaluator` is an object the worker holds; :meth:`Evaluator.evaluate` runs
``trainer.eval.metrics.evaluate`` (kNN, linear probe, feature std, effective rank) with
heartbeats, adds the training objective on held-out images (fixed masks) when
``checkpoint.metric`` is ``val_loss``, the contrastive accuracy when ``loss.use_contrastive``
(:meth:`Evaluator.contrastive_accuracy`), and saves a mask-overlay PNG when
``logging.log_images``. At the end of a run :meth:`Evaluator.end_pictures` pictures the run's
best checkpoint (``trainer/eval/pictures.py``, a ``pictures`` event).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainer.config import Config
from trainer.data.masks import MaskCollator
from trainer.eval.metrics import EvalResult, evaluate
from trainer.eval.pictures import make_pictures, mask_overlay, pick_checkpoint
from trainer.events import CHECKPOINT_DIR, Eval
from trainer.runtime.cpu_threads import CpuThreads
from trainer.runtime.dist import Dist
from trainer.runtime.emitter import Emitter
from trainer.train.state import TrainState


class Evaluator:
    """The worker's evaluations of ``model`` on the held-out ``eval_data`` (owns nothing that
    changes; reads the micro-batch and step of the :class:`TrainState` it is given)."""

    def __init__(
        self,
        cfg: Config,
        model: Any,
        eval_data: Any,
        device: torch.device,
        dist: Dist,
        ev: Emitter,
        run_dir: Path,
        state: TrainState,
        cpu_threads: CpuThreads | None = None,
    ) -> None:
        self.cfg, self.model, self.eval_data, self.device = cfg, model, eval_data, device
        self.dist, self.ev, self.run_dir, self.state = dist, ev, run_dir, state
        self.cpu_threads = cpu_threads  # the thread governor, ticked by the eval heartbeat

    def evaluate_main(self, epoch: int) -> EvalResult | None:
        """Rank 0 evaluates (its events are the run's); other ranks wait for it and get None."""
        res = self.evaluate(epoch) if self.dist.main else None
        self.dist.barrier()
        return res

    def evaluate(self, epoch: int) -> EvalResult:
        self.ev.progress(phase="eval", epoch=epoch, step=self.state.step)

        def hb() -> None:
            self.ev.progress(phase="eval")
            if self.cpu_threads is not None:  # evaluation suffers a busy core the most
                self.cpu_threads.tick()

        res = evaluate(
            self.model,
            self.cfg,
            self.eval_data,
            self.device,
            heartbeat=hb,
            val_loss_fn=self.val_loss if self.cfg.checkpoint.metric == "val_loss" else None,
        )
        self.ev.emit(
            Eval(
                epoch=epoch,
                knn=res.knn,
                linear_probe=res.linear_probe,
                feature_std=res.feature_std,
                effective_rank=res.effective_rank,
                val_loss=res.val_loss,
                seconds=res.seconds,
                num_samples=res.num_samples,
                linear_probe_l2=res.linear_probe_l2,
                feature_variance=res.feature_variance,
                contrastive_accuracy=(
                    self.contrastive_accuracy() if self.cfg.loss.use_contrastive else None
                ),
            )
        )
        if self.cfg.logging.log_images:
            self.save_mask_image(epoch)
        self.ev.progress(phase="train")
        return res

    def end_pictures(self, final: Path | None) -> None:
        """The pictures of the run's best checkpoint: ``best.pt`` when this run marked one,
        else ``final`` (the run's last checkpoint)."""
        self.picture(*pick_checkpoint(self.run_dir / CHECKPOINT_DIR, final))

    def picture(self, path: Path | None, in_memory: bool) -> None:
        """Rank 0: the pictures of checkpoint ``path`` (``in_memory``: the model holds its
        weights) as a ``pictures`` event; a failure is in the event, never raised."""
        if not self.dist.main:
            return
        self.ev.progress(phase="eval")
        _, test = self.eval_data
        out = self.run_dir / "pictures"
        self.ev.emit(make_pictures(self.model, self.cfg, test, self.device, path, out, in_memory))

    @torch.no_grad()
    def save_mask_image(self, epoch: int) -> Path:
        """logging.log_images: 8 held-out images with context kept and targets tinted red."""
        from torchvision.utils import save_image

        _, test = self.eval_data
        items = [test[i] for i in range(min(8, len(test)))]
        if self.cfg.loss.use_contrastive:
            items = [((x, x), y) for x, y in items]
        masks = MaskCollator(
            self.cfg.masking, self.cfg.data.image_size, self.cfg.model.patch_size, seed=epoch
        )
        p = self.cfg.model.patch_size
        out = mask_overlay(masks(items), p, self.cfg.data.image_size // p)
        path = self.run_dir / "images" / f"masks-e{epoch:04d}.png"
        path.parent.mkdir(exist_ok=True)
        save_image(out, path, nrow=8)
        return path

    @torch.no_grad()
    def contrastive_accuracy(self) -> float:
        """Top-1 of the positive pair among the evaluation batch, as the contrastive term sees
        it: held-out images in batches of the training micro-batch (fixed masks), view 1 the
        context encoder on the masked image, view 2 its horizontal flip through the encoder the
        loss uses; an image's own other view must be the most similar of the batch (cosine),
        both directions, averaged over at most 4 batches."""
        _, test = self.eval_data
        masks = MaskCollator(
            self.cfg.masking, self.cfg.data.image_size, self.cfg.model.patch_size, seed=54321
        )
        was = self.model.training
        self.model.eval()
        micro = self.state.micro
        n = min(len(test), 4 * micro)
        size = max(2, min(micro, n))
        hits, total = 0.0, 0
        for i in range(0, n - size + 1, size):
            chunk = [((x, x.flip(-1)), y) for x, y in (test[j] for j in range(i, i + size))]
            batch = masks(chunk).to(self.device)
            tokens, _ = self.model.encoder(batch.images, batch.ctx_idx)
            z1 = torch.nn.functional.normalize(tokens.float().mean(dim=1), dim=-1)
            on_context = self.cfg.loss.contrastive_on_context
            z2 = torch.nn.functional.normalize(
                self.model._embed_view2(batch, on_context=on_context), dim=-1
            )
            sim = z1 @ z2.T
            truth = torch.arange(len(sim), device=sim.device)
            hits += float((sim.argmax(1) == truth).sum() + (sim.argmax(0) == truth).sum()) / 2
            total += len(sim)
            self.ev.progress(phase="eval")
        self.model.train(was)
        return hits / max(total, 1)

    @torch.no_grad()
    def val_loss(self) -> float:
        """Mean training objective on held-out images (fixed masks), for checkpoint.metric."""
        _, test = self.eval_data
        masks = MaskCollator(
            self.cfg.masking, self.cfg.data.image_size, self.cfg.model.patch_size, seed=12345
        )
        was = self.model.training
        self.model.eval()
        micro = self.state.micro
        n = min(len(test), 4 * micro)
        items = [test[i] for i in range(n)]
        total, count = 0.0, 0
        for i in range(0, n - micro + 1, micro):
            chunk = items[i : i + micro]
            if self.cfg.loss.use_contrastive:
                chunk = [((x, x), y) for x, y in chunk]
            batch = masks(chunk).to(self.device)
            total += float(self.model(batch).total)
            count += 1
            self.ev.progress(phase="eval")
        self.model.train(was)
        return total / max(count, 1)
