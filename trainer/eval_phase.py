"""The worker's evaluation phase: the ``eval`` event, the held-out loss and the mask image.

Part of :class:`trainer.loop.Worker` (a base class of it). :meth:`EvalPhase.evaluate` runs
``trainer.evaluation.evaluate`` (kNN, linear probe, feature std, effective rank) with
heartbeats, adds the training objective on held-out images (fixed masks) when
``checkpoint.metric`` is ``val_loss``, the contrastive accuracy when ``loss.use_contrastive``
(:meth:`EvalPhase.contrastive_accuracy`), and saves a mask-overlay PNG when
``logging.log_images``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.evaluation import EvalResult, evaluate
from trainer.events import Eval
from trainer.masks import MaskCollator


class EvalPhase:
    """Evaluation for the Worker (uses its ``cfg``, ``model``, ``eval_data``, ``device``,
    ``micro``, ``step``, ``run_dir``, ``dist`` and ``ev``)."""

    def evaluate_main(self, epoch: int) -> EvalResult | None:
        """Rank 0 evaluates (its events are the run's); other ranks wait for it and get None."""
        res = self.evaluate(epoch) if self.dist.main else None
        self.dist.barrier()
        return res

    def evaluate(self, epoch: int) -> EvalResult:
        self.ev.progress(phase="eval", epoch=epoch, step=self.step)

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
        n = min(len(test), 4 * self.micro)
        size = max(2, min(self.micro, n))
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
