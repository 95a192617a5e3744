"""Vision Transformer building blocks: the encoder and the I-JEPA predictor.

Both are pre-norm ViTs over a square patch grid with **fixed 2-D sin-cos position embeddings**
(a buffer, not a parameter: nothing to learn or decay, and any token subset is addressed by
gathering rows of it, so the context encoder sees only the kept tokens). Switches, each one
really changing the computation:

- ``use_sdpa``: attention through ``F.scaled_dot_product_attention`` (inside
  ``feature_scope("flash_attention")``) instead of an explicit ``softmax(QK^T/sqrt(d))V``.
- ``layerscale_init``: per-channel gammas on both residual branches
  (``feature_scope("layerscale")``).
- ``grad_ckpt``: every block runs under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``
  when the module is training and autograd is on (``feature_scope("gradient_checkpointing")``).

Shapes are static given the token counts; nothing here syncs with the host.
"""

from __future__ import annotations

import contextlib
import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from trainer.train.faults import feature_scope

# Early stop ends a checkpoint recomputation by raising inside the block, through the feature
# scopes there (which would blame a feature): recompute whole blocks. The keyword (newer torch)
# keeps torch.compile graphs whole; the global switch is the fallback for older releases.
_NO_EARLY_STOP_KW = "early_stop" in inspect.signature(checkpoint).parameters


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """[grid*grid, dim] 2-D sin-cos embedding (MAE/I-JEPA layout: half rows, half columns)."""
    if dim % 4:
        raise ValueError(f"position embedding width {dim} must be a multiple of 4")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def embed(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([embed(rows), embed(cols)], dim=1).float()


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], idx [B, K] long → [B, K, D]."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.size(-1)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with feature_scope("layerscale"):
            return x * self.gamma


class Attention(nn.Module):
    def __init__(
        self, dim: int, heads: int, qkv_bias: bool, dropout: float, use_sdpa: bool
    ) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.proj_drop = nn.Dropout(dropout)
        self.use_sdpa = use_sdpa

    def forward(self, x: torch.Tensor, q_from: int = 0) -> torch.Tensor:
        """Self-attention over ``x`` [B, N, D]; with ``q_from`` > 0 only rows ``q_from:`` are
        computed (they still attend to every row): [B, N - q_from, D], exactly those rows of
        the full result, without the queries and outputs of the rows before them."""
        b, n, d = x.shape
        heads, dh = self.heads, d // self.heads
        if q_from:
            w, bias = self.qkv.weight, self.qkv.bias
            nq = n - q_from
            q = F.linear(x[:, q_from:], w[:d], None if bias is None else bias[:d])
            q = q.reshape(b, nq, heads, dh).transpose(1, 2)
            kv = F.linear(x, w[d:], None if bias is None else bias[d:])
            k, v = kv.reshape(b, n, 2, heads, dh).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            nq = n
            qkv = self.qkv(x).reshape(b, n, 3, heads, dh).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        p = self.dropout if self.training else 0.0
        if self.use_sdpa:
            with feature_scope("flash_attention"):
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = F.dropout(attn.softmax(dim=-1), p=p)
            out = attn @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, nq, d)))


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block; optional LayerScale on both residual branches."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        *,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        use_sdpa: bool = True,
        layerscale_init: float | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias, dropout, use_sdpa)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio, dropout)
        use_ls = layerscale_init is not None
        self.ls1 = LayerScale(dim, layerscale_init) if use_ls else nn.Identity()
        self.ls2 = LayerScale(dim, layerscale_init) if use_ls else nn.Identity()

    def forward(self, x: torch.Tensor, q_from: int = 0) -> torch.Tensor:
        """[B, N, D] → [B, N - q_from, D]: with ``q_from`` only the rows from ``q_from`` on are
        computed (attending to all rows), for a last block whose other rows nobody reads."""
        y = x[:, q_from:] if q_from else x
        y = y + self.ls1(self.attn(self.norm1(x), q_from))
        return y + self.ls2(self.mlp(self.norm2(y)))


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    use_ckpt: bool,
    keep: tuple[int, ...] = (),
    last_from: int = 0,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Apply blocks in order → (output, {i: output of block i (1-based) for i in keep}).
    ``last_from``: the last block computes only rows ``last_from:`` (``Block.forward``)."""
    kept: dict[int, torch.Tensor] = {}
    scope = feature_scope("gradient_checkpointing") if use_ckpt else contextlib.nullcontext()
    # Early stop ends a recomputation by raising inside the block, through the feature scopes
    # there (which would attribute it to a feature); recompute whole blocks instead.
    kw = {"early_stop": False} if _NO_EARLY_STOP_KW else {}
    legacy = use_ckpt and not _NO_EARLY_STOP_KW
    no_early_stop = set_checkpoint_early_stop(False) if legacy else contextlib.nullcontext()
    with scope, no_early_stop:
        for i, blk in enumerate(blocks, 1):
            rows = last_from if i == len(blocks) else 0
            x = checkpoint(blk, x, rows, use_reentrant=False, **kw) if use_ckpt else blk(x, rows)
            if i in keep:
                kept[i] = x
    return x, kept


def init_weights(module: nn.Module, blocks: nn.ModuleList) -> None:
    """I-JEPA init: trunc-normal(.02) linears, unit LayerNorms, residual outputs / sqrt(2·layer)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for layer, blk in enumerate(blocks, 1):
        blk.attn.proj.weight.data.div_(math.sqrt(2.0 * layer))
        blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer))


class VisionTransformer(nn.Module):
    """Patch embedding + sin-cos positions + pre-norm blocks + final LayerNorm.

    ``forward(images, keep_idx=None, stages=False)`` → ``(tokens, stage_outputs)``: tokens
    [B, K, D] after the final norm (K = N, or the kept count when ``keep_idx`` [B, K] is given:
    the other tokens are dropped before the first block). With ``stages=True``,
    ``stage_outputs`` holds the outputs of blocks ``stage_blocks`` (depth/4, depth/2,
    3·depth/4; rounded up) followed by the final normed tokens; otherwise it is empty.
    """

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        use_sdpa: bool,
        layerscale_init: float | None,
        grad_ckpt: bool,
    ) -> None:
        super().__init__()
        self.grid = image_size // patch_size
        self.dim = dim
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed(dim, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, use_sdpa=use_sdpa, layerscale_init=layerscale_init)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.grad_ckpt = grad_ckpt
        self.stage_blocks = tuple(max(1, math.ceil(depth * k / 4)) for k in (1, 2, 3))
        init_weights(self, self.blocks)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.size(0), -1))

    def forward(
        self, images: torch.Tensor, keep_idx: torch.Tensor | None = None, stages: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed
        if keep_idx is not None:
            x = gather_tokens(x, keep_idx)
        use_ckpt = self.grad_ckpt and self.training and torch.is_grad_enabled()
        x, kept = run_blocks(self.blocks, x, use_ckpt, self.stage_blocks if stages else ())
        x = self.norm(x)
        outs = [kept[i] for i in self.stage_blocks] + [x] if stages else []
        return x, outs


class Predictor(nn.Module):
    """I-JEPA predictor: context tokens + one mask token per target position → predictions.

    ``forward(ctx [B, Nc, in_dim], ctx_idx [B, Nc], tgt_idx [B, M, Nt])`` returns one tensor
    [B, M, Nt, out_dim_h] per output head. Each of the M target blocks is predicted in its own
    sequence (the context repeated M times, batch B·M), as in I-JEPA, so blocks do not see each
    other's mask tokens.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        out_dims: list[int],
        grid: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        dropout: float,
        use_sdpa: bool,
        grad_ckpt: bool,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(dim, grid)[None], persistent=False)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, qkv_bias=qkv_bias, dropout=dropout, use_sdpa=use_sdpa)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleList(nn.Linear(dim, d) for d in out_dims)
        self.grad_ckpt = grad_ckpt
        init_weights(self, self.blocks)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(
        self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor
    ) -> list[torch.Tensor]:
        b, nc, _ = ctx.shape
        m, nt = tgt_idx.shape[1:]
        pos = self.pos_embed.expand(b, -1, -1)
        x = self.embed(ctx) + gather_tokens(pos, ctx_idx)
        x = x.repeat_interleave(m, dim=0)  # [B*M, Nc, P]
        tgt_pos = gather_tokens(pos, tgt_idx.reshape(b, m * nt)).reshape(b * m, nt, -1)
        x = torch.cat([x, self.mask_token + tgt_pos], dim=1)
        use_ckpt = self.grad_ckpt and self.training and torch.is_grad_enabled()
        # only the mask tokens' outputs are read: the last block skips the context rows'
        # queries, attention outputs and MLP (exact; ~9% of the predictor's FLOPs at 64 + 34)
        x, _ = run_blocks(self.blocks, x, use_ckpt, last_from=nc)
        x = self.norm(x)
        return [head(x).reshape(b, m, nt, -1) for head in self.heads]
