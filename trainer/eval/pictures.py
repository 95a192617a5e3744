"""The night's pictures: what the best checkpoint's encoder looks at, on fixed held-out images.

    path, in_memory = pick_checkpoint(run_dir / "checkpoints", final_checkpoint)
    event = make_pictures(model, cfg, test, device, path, run_dir / "pictures", in_memory)

For ``COUNT`` held-out images at fixed positions of the evaluation test split
(:func:`fixed_indices`: the same images every night, so nights compare) the worker computes,
with the checkpoint's **target encoder** (the EMA encoder every evaluation reads):

- ``masks``: the images with the context the mask collator keeps and its target blocks tinted
  red, drawn by the night's ``masking`` config from a fixed seed (``MASK_SEED``) — the masks
  the night trained with, in kind (:func:`mask_overlay`, also the eval phase's mask image);
- ``attention``: the last block's attention, heads averaged. The encoder has no CLS token, so
  the map is the **mean attention each patch receives**: softmax(q·kᵀ/√d) of every query row,
  averaged over the heads and over the query patches — a [grid, grid] map summing to 1. It is
  computed explicitly from the block's own LayerNorm and qkv weights on the block's input
  (:func:`attention_weights`), so the training path (SDPA or not, gradient checkpointing or
  not) is untouched;
- ``fpn`` (FPN on): per level used by the loss (``model.num_hierarchies``), the L2 norm of each
  patch's fused map **before** the level's output LayerNorm (after it every token has a norm
  of about √dim, and levels 1–3 keep an identity LayerNorm: the map would be flat).

The arrays go to ``OUT_DIR/pictures.npz`` (numpy, no pickle: images as uint8 [B, H, W, 3],
maps as float32); the morning report draws the PNGs from it beside the report
(``orchestrator/views/report/pictures.py``). :func:`make_pictures` never raises: a failure
comes back as a ``pictures`` event with ``problem`` set (and a line on stderr).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.checkpoint import store as ckpt
from trainer.config import Config
from trainer.data.masks import Batch, MaskCollator
from trainer.events import Pictures

COUNT = 4  # held-out images pictured
MASK_SEED = 20_251_207  # the masks' fixed stream position: the same masks every night
PICTURES_FILE = "pictures.npz"


def fixed_indices(n: int, count: int = COUNT) -> list[int]:
    """``count`` evenly spaced positions of a split of ``n`` images (all of them if fewer)."""
    count = min(count, n)
    return [i * n // count for i in range(count)]


def fixed_batch(cfg: Config, test: Any, indices: list[int], seed: int = MASK_SEED) -> Batch:
    """The images at ``indices`` of ``test`` with the masks of the night's ``masking`` config
    at stream position ``seed`` (contrastive recipes: the image is its own second view)."""
    items = [test[i] for i in indices]
    if cfg.loss.use_contrastive:
        items = [((x, x), y) for x, y in items]
    masks = MaskCollator(cfg.masking, cfg.data.image_size, cfg.model.patch_size, seed=0)
    return masks.collate(items, position=seed)


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] → each image scaled to [0, 1] (the inputs are normalised)."""
    img = images.float()
    lo, hi = img.amin(dim=(1, 2, 3), keepdim=True), img.amax(dim=(1, 2, 3), keepdim=True)
    return (img - lo) / (hi - lo + 1e-6)


def mask_overlay(batch: Batch, patch: int, grid: int) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1]: the context kept at full brightness, the rest dimmed to a
    quarter, the target blocks tinted red."""
    img = unit_range(batch.images.cpu())
    keep = torch.zeros(len(img), grid * grid)
    keep.scatter_(1, batch.ctx_idx.cpu(), 1.0)
    tgt = torch.zeros(len(img), grid * grid)
    tgt.scatter_(1, batch.tgt_idx.flatten(1).cpu(), 1.0)

    def up(m: torch.Tensor) -> torch.Tensor:
        return m.view(-1, 1, grid, grid).repeat_interleave(patch, 2).repeat_interleave(patch, 3)

    out = img * (0.25 + 0.75 * up(keep))
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return torch.where(up(tgt).bool(), 0.5 * out + 0.5 * red, out)


def attention_weights(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The attention probabilities of ``block`` (a ``trainer.model.vit.Block``) for its input ``x``
    [B, N, D]: softmax(q·kᵀ·scale) from the block's ``norm1`` and ``attn.qkv``, float32
    [B, heads, N, N] (each row sums to 1)."""
    attn = block.attn
    b, n, d = x.shape
    qkv = attn.qkv(block.norm1(x)).float()
    q, k, _ = qkv.reshape(b, n, 3, attn.heads, d // attn.heads).permute(2, 0, 3, 1, 4).unbind(0)
    return ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)


def attention_received(weights: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, N] → [B, N]: the mean attention each key patch receives (heads and query
    rows averaged; each image's map sums to 1)."""
    return weights.mean(dim=1).mean(dim=1)


@torch.no_grad()
def compute_maps(
    model: nn.Module, cfg: Config, test: Any, device: torch.device, count: int = COUNT
) -> dict[str, np.ndarray]:
    """The arrays of ``pictures.npz`` for ``model``'s target encoder (module docstring):
    ``indices`` [B], ``images``/``masks`` uint8 [B, H, W, 3], ``attention`` [B, g, g],
    ``fpn`` [L, B, g, g] (L = 0 without FPN)."""
    indices = fixed_indices(len(test), count)
    batch = fixed_batch(cfg, test, indices)
    enc = model.target_encoder
    grid, patch = enc.vit.grid, cfg.model.patch_size
    levels = cfg.model.num_hierarchies if enc.fpn is not None else 0
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        return lambda _module, args: seen.__setitem__(name, args[0])

    hooks = [enc.vit.blocks[-1].register_forward_pre_hook(keep("last"))]
    if enc.fpn is not None:
        hooks += [
            enc.fpn.out_norm[i].register_forward_pre_hook(keep(f"fpn{i}")) for i in range(levels)
        ]
    was = enc.training
    enc.eval()
    try:
        enc(batch.images.float().to(device), levels=max(levels, 1))
        weights = attention_weights(enc.vit.blocks[-1], seen["last"])
    finally:
        for h in hooks:
            h.remove()
        enc.train(was)
    b = len(indices)
    attention = attention_received(weights).reshape(b, grid, grid)
    fpn = [seen[f"fpn{i}"].float().norm(dim=-1).reshape(b, grid, grid) for i in range(levels)]

    def rgb(t: torch.Tensor) -> np.ndarray:
        return (t.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    return {
        "indices": np.asarray(indices, dtype=np.int64),
        "images": rgb(unit_range(batch.images.cpu())),
        "masks": rgb(mask_overlay(batch, patch, grid)),
        "attention": attention.cpu().numpy().astype(np.float32),
        "fpn": (
            torch.stack(fpn).cpu().numpy().astype(np.float32)
            if fpn
            else np.zeros((0, b, grid, grid), np.float32)
        ),
    }


def pick_checkpoint(checkpoint_dir: Path, final: Path | None) -> tuple[Path | None, bool]:
    """The run's best checkpoint: ``best.pt`` when this run marked one, else ``final``; and
    whether the model in memory holds its weights (best.pt is a copy of ``final``)."""
    best = Path(checkpoint_dir) / "best.pt"
    meta = ckpt.read_sidecar(best) if best.is_file() else None
    if meta is None:
        return final, final is not None
    return best, final is not None and meta.get("source") == final.name


def load_target_encoder(model: nn.Module, path: Path) -> None:
    """The target encoder's weights from checkpoint ``path`` (verified). Keys of a module that
    is off now (a feature the ladder disabled) are ignored; a missing one is an error."""
    state = ckpt.load(path)["model"]
    prefix = "target_encoder."
    sub = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    missing, _ = model.target_encoder.load_state_dict(sub, strict=False)
    if missing:
        raise ckpt.IncompatibleCheckpointError(
            f"{path.name} lacks {len(missing)} target-encoder tensors ({missing[0]}, ...)"
        )


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` through a temp file and a rename (readers never see half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pictures-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_pictures(
    model: nn.Module,
    cfg: Config,
    test: Any,
    device: torch.device,
    checkpoint: Path | None,
    out_dir: Path,
    in_memory: bool = False,
) -> Pictures:
    """Load ``checkpoint``'s target encoder into ``model`` (unless ``in_memory``), compute the
    maps and write ``out_dir/pictures.npz``; the ``pictures`` event to emit. Never raises."""
    t = time.monotonic()
    meta = (ckpt.read_sidecar(checkpoint) or {}) if checkpoint is not None else {}
    base = {
        "checkpoint": str(checkpoint or ""),
        "sha256": str(meta.get("sha256") or ""),
        "epoch": meta.get("epoch"),
        "step": meta.get("step"),
    }
    try:
        if checkpoint is None:
            raise ckpt.NoCheckpointError("no checkpoint to picture")
        if not in_memory:
            load_target_encoder(model, checkpoint)
        arrays = compute_maps(model, cfg, test, device)
        path = Path(out_dir) / PICTURES_FILE
        save_arrays(path, arrays)
    except Exception as exc:  # a picture never fails the run
        problem = f"{type(exc).__name__}: {exc}"
        print(f"pictures: not drawn ({problem})", file=sys.stderr, flush=True)
        return Pictures(path="", problem=problem, seconds=time.monotonic() - t, **base)
    return Pictures(
        path=str(path),
        indices=[int(i) for i in arrays["indices"]],
        seconds=time.monotonic() - t,
        **base,
    )
