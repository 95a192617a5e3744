"""The H-JEPA model: context encoder (+FPN), EMA target encoder, predictor, and its loss.

    model = build_model(cfg)          # cfg: trainer.config.Config
    out = model(batch)                # LossOutput; out.total.backward()
    model.update_target(momentum)     # once per optimizer step
    feats = model.encode(images)      # [B, D] for kNN / probe / std / rank

Forward (one batch, M target blocks of (h, w) patches, L = model.num_hierarchies levels):

1. Target encoder (EMA copy, no grad) on all tokens → L target maps [B, N, Dt]. Without FPN
   every level uses the final tokens (Dt = D). With FPN the four encoder stages (outputs of
   blocks depth/4, depth/2, 3·depth/4 and the final tokens) are fused top-down; level 0 takes
   the map fused down to the shallowest stage, level l the map fused l steps earlier (deeper
   stages only), Dt = fpn.feature_dim. ``loss.normalize_embeddings`` layer-norms each map.
2. Context encoder on the context tokens only (the rest are dropped before the first block);
   with FPN it fuses its stages the same way and the predictor reads the level-0 fused map.
3. Predictor → patch-level predictions for every target block (one output head per level
   with FPN, one shared head without).
4. Level l loss: ``loss.distance`` between predictions and targets, both pooled spatially
   inside each block by 2^l through ``batch.tgt_pool`` (see trainer.model.losses).
   JEPA = Σ hierarchy_weights[l] · level_l.
5. Optional terms on z1, the mean-pooled context-encoder tokens of view 1 (with several ranks,
   z1 and z2 are all-gathered first, so both terms see the global batch: trainer/runtime/dist.py):
   contrastive (NT-Xent, needs ``batch.images2``) against z2, the pooled view-2 embedding from
   the target encoder on all tokens (default; no grad, MoCo-style keys) or from the context
   encoder on the same context tokens (``contrastive_on_context``); VICReg variance and
   covariance on z1 (and on z2 when trainable), plus invariance to z2 whenever a second view
   exists (z2 from the target encoder if contrastive is off).

``total = jepa_weight·JEPA + vicreg_weight·VICReg + contrastive_weight·NT-Xent``; ``parts``
holds the three terms before those weights. LayerScale is applied in the encoder blocks only.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import Config, ConfigError
from trainer.config.features import FeatureName
from trainer.data.masks import Batch
from trainer.model import losses
from trainer.model.vit import Predictor, VisionTransformer, gather_tokens, init_weights
from trainer.runtime.device import Kernels, kernels_for
from trainer.runtime.dist import gather_with_grad
from trainer.train.faults import feature_scope

# State-dict keys whose presence or shape depends on an optional feature. When a fallback turns
# the feature off, a resume may drop these keys from the checkpoint (or leave the model's own
# fresh) — no other key may differ (trainer.checkpoint.restore). FPN owns its modules in both
# encoders and shapes the predictor's input projection and its per-level output heads. The
# contrastive term has no parameters (NT-Xent on pooled tokens), so switching it off drops nothing.
FEATURE_KEY_PREFIXES: dict[FeatureName, tuple[str, ...]] = {
    "fpn": ("encoder.fpn.", "target_encoder.fpn.", "predictor.embed.", "predictor.heads."),
}


@dataclass
class LossOutput:
    total: torch.Tensor  # scalar, what backward() is called on
    levels: list[torch.Tensor]  # per-hierarchy-level JEPA loss (unweighted), len = L
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # jepa / vicreg / contrastive


class FPN(nn.Module):
    """Top-down fusion of 4 stages [shallow → deep] of [B, K, in_dim] tokens.

    P4 = lat4(C4); P_i = P_{i+1} + lat_i(C_i) (add) or Linear([lat_i(C_i), P_{i+1}]) (concat).
    Returns the first ``levels`` of [P1, P2, P3, P4] (each LayerNorm-ed, [B, K, dim]): P1 fused
    down to the shallowest stage, P4 the deepest stage alone. Token-wise, so it runs on any token
    subset. The fusion itself needs every stage, so only the output norms depend on ``levels``.
    """

    def __init__(self, in_dim: int, dim: int, fusion: str) -> None:
        super().__init__()
        self.fusion = fusion
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim)) for _ in range(4)
        )
        n_merge = 3 if fusion == "concat" else 0
        self.merge = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(n_merge))
        self.out_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        init_weights(self, nn.ModuleList())

    def forward(self, stages: list[torch.Tensor], levels: int = 4) -> list[torch.Tensor]:
        with feature_scope("fpn"):
            top = self.lateral[3](stages[3])
            fused = [top]
            for i in (2, 1, 0):
                lat = self.lateral[i](stages[i])
                if self.fusion == "concat":
                    top = self.merge[i](torch.cat([lat, top], dim=-1))
                else:
                    top = lat + top
                fused.append(top)
            fused.reverse()
            return [norm(f) for norm, f in zip(self.out_norm[:levels], fused[:levels], strict=True)]


class Encoder(nn.Module):
    """ViT plus optional FPN: ``forward(images, keep_idx, levels) → (tokens [B,K,D], the first
    ``levels`` fpn maps | None)``."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m = cfg.model
        self.vit = VisionTransformer(
            image_size=cfg.data.image_size,
            patch_size=m.patch_size,
            dim=m.embed_dim,
            depth=m.depth,
            heads=m.num_heads,
            mlp_ratio=m.mlp_ratio,
            use_sdpa=m.use_flash_attention,
            layerscale_init=m.layerscale_init if m.use_layerscale else None,
            grad_ckpt=m.use_gradient_checkpointing,
        )
        fpn_dim = m.fpn.feature_dim or m.embed_dim
        self.fpn = FPN(m.embed_dim, fpn_dim, m.fpn.fusion_method) if m.use_fpn else None

    def forward(
        self, images: torch.Tensor, keep_idx: torch.Tensor | None = None, levels: int = 4
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        tokens, stages = self.vit(images, keep_idx, stages=self.fpn is not None)
        return tokens, (self.fpn(stages, levels) if self.fpn is not None else None)


class HJEPA(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m, self.loss_cfg = cfg.model, cfg.loss
        self.num_levels = m.num_hierarchies
        self.weights = list(cfg.loss.hierarchy_weights)
        self.use_fpn = m.use_fpn
        self._features = _describe(cfg)
        pdim = m.predictor.embed_dim or m.embed_dim
        if pdim % m.predictor.num_heads or pdim % 4:
            raise ValueError(
                f"model.predictor: embed_dim {pdim} must be divisible by num_heads "
                f"{m.predictor.num_heads} and by 4"
            )
        self.encoder = Encoder(cfg)
        if self.encoder.fpn is not None:
            # The context path reads only the level-0 map (the predictor's input), so the output
            # norms of levels 1-3 could never get a gradient (and DDP refuses parameters that
            # get none). They stay frozen at their identity initialisation; the target encoder
            # reads its EMA copies of them, which therefore stay identity too.
            self.encoder.fpn.out_norm[1:].requires_grad_(False)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_encoder.requires_grad_(False)
        tdim = (m.fpn.feature_dim or m.embed_dim) if m.use_fpn else m.embed_dim
        self.predictor = Predictor(
            in_dim=tdim,
            out_dims=[tdim] * (self.num_levels if m.use_fpn else 1),
            grid=cfg.data.image_size // m.patch_size,
            dim=pdim,
            depth=m.predictor.depth,
            heads=m.predictor.num_heads,
            mlp_ratio=m.predictor.mlp_ratio,
            qkv_bias=m.predictor.qkv_bias,
            dropout=m.predictor.dropout,
            use_sdpa=m.use_flash_attention,
            grad_ckpt=m.use_gradient_checkpointing,
        )

    # -- training loss ---------------------------------------------------------------------
    def forward(self, batch: Batch) -> LossOutput:
        lc = self.loss_cfg
        with torch.no_grad():
            t_tokens, t_maps = self.target_encoder(batch.images, levels=self.num_levels)
            # pooled target embeddings [B, D] of this batch, read by trainer/train/health.py
            self.last_target_embedding = t_tokens.detach().float().mean(dim=1)
            maps = t_maps if t_maps is not None else [t_tokens]
            if lc.normalize_embeddings:
                maps = [F.layer_norm(t.float(), (t.size(-1),)) for t in maps]
            b, m, nt = batch.tgt_idx.shape
            flat_idx = batch.tgt_idx.reshape(b, m * nt)
            targets = [gather_tokens(t, flat_idx).reshape(b, m, nt, -1) for t in maps]
        c_tokens, c_maps = self.encoder(batch.images, batch.ctx_idx, levels=1)
        preds = self.predictor(
            c_maps[0] if c_maps is not None else c_tokens, batch.ctx_idx, batch.tgt_idx
        )
        levels = [
            losses.level_loss(
                preds[min(i, len(preds) - 1)],
                targets[min(i, len(targets) - 1)],
                batch.tgt_pool[i - 1] if i else None,
                lc.distance,
            )
            for i in range(self.num_levels)
        ]
        jepa = sum(w * lv for w, lv in zip(self.weights, levels, strict=True))
        assert isinstance(jepa, torch.Tensor)
        parts = {"jepa": jepa}
        total = lc.jepa_weight * jepa
        z1 = self._global(c_tokens.float().mean(dim=1))
        z2: torch.Tensor | None = None
        if lc.use_contrastive:
            if batch.images2 is None:
                raise ValueError(
                    "loss.use_contrastive needs two augmented views, but batch.images2 is None "
                    "(the dataset must yield ((view1, view2), label) items)"
                )
            with feature_scope("contrastive"):
                z2 = self._global(self._embed_view2(batch, on_context=lc.contrastive_on_context))
                parts["contrastive"] = losses.nt_xent(
                    z1, z2, lc.contrastive_temperature, lc.use_cosine_similarity
                )
            total = total + lc.contrastive_weight * parts["contrastive"]
        if lc.use_vicreg:
            with feature_scope("vicreg"):
                if z2 is None and batch.images2 is not None:
                    z2 = self._global(self._embed_view2(batch, on_context=False))
                parts["vicreg"] = losses.vicreg_loss(z1, z2, lc.vicreg)
            total = total + lc.vicreg_weight * parts["vicreg"]
        return LossOutput(total=total, levels=levels, parts=parts)

    def _global(self, z: torch.Tensor) -> torch.Tensor:
        """Training with several ranks: the global batch of pooled embeddings (every rank's rows,
        gradients flowing back to their own rank), so VICReg's statistics and NT-Xent's
        negatives see the whole batch; ``z`` unchanged alone or in evaluation."""
        return gather_with_grad(z) if self.training else z

    def _embed_view2(self, batch: Batch, on_context: bool) -> torch.Tensor:
        """Pooled view-2 embedding [B, D] (float32)."""
        assert batch.images2 is not None
        if on_context:
            tokens, _ = self.encoder.vit(batch.images2, batch.ctx_idx)
            return tokens.float().mean(dim=1)
        with torch.no_grad():
            tokens, _ = self.target_encoder.vit(batch.images2)
            return tokens.float().mean(dim=1)

    # -- EMA, evaluation, optimizer --------------------------------------------------------
    @torch.no_grad()
    def update_target(
        self,
        momentum: float,
        kernels: Kernels | None = None,
        applied: torch.Tensor | None = None,
    ) -> None:
        """target ← momentum·target + (1 − momentum)·encoder: one foreach lerp where the
        device has foreach kernels (``kernels``, default: chosen for the parameters' device).
        ``applied`` (a 0-d 0./1. tensor on the device) gates it without a host sync: 0 leaves
        the target as it is (the step was skipped on the device)."""
        tgt = list(self.target_encoder.parameters())
        src = [p.detach() for p in self.encoder.parameters()]
        k = kernels or kernels_for(tgt[0].device)
        weight = 1.0 - float(momentum)
        k.lerp_(tgt, src, weight if applied is None else applied * weight)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, D] mean of the target encoder's final (LayerNorm-ed) tokens; not L2-normalised."""
        tokens, _ = self.target_encoder.vit(images)
        return tokens.float().mean(dim=1)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Trainable params in two groups; 1-D params (norms, biases, LayerScale gammas) and
        the predictor's mask token get no weight decay (position embeddings are fixed buffers)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim <= 1 or name.endswith("mask_token") or "pos_embed" in name:
                no_decay.append(p)
            else:
                decay.append(p)
        return [
            {"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        ]

    def feature_status(self) -> dict[str, str]:
        return dict(self._features)


def _describe(cfg: Config) -> dict[str, str]:
    m, lc = cfg.model, cfg.loss

    def onoff(flag: bool, detail: str = "") -> str:
        return ("on" + (f" ({detail})" if detail else "")) if flag else "off"

    where = "context encoder" if lc.contrastive_on_context else "target encoder"
    sim = "cosine" if lc.use_cosine_similarity else "dot"
    return {
        "flash_attention": onoff(m.use_flash_attention),
        "layerscale": onoff(m.use_layerscale, f"init {m.layerscale_init:g}"),
        "gradient_checkpointing": onoff(m.use_gradient_checkpointing),
        "fpn": onoff(m.use_fpn, f"{m.fpn.fusion_method}, dim {m.fpn.feature_dim or m.embed_dim}"),
        "hierarchy": f"{m.num_hierarchies} levels, weights {list(lc.hierarchy_weights)}",
        "jepa_loss": f"{lc.distance}, weight {lc.jepa_weight:g}"
        + (", normalized targets" if lc.normalize_embeddings else ""),
        "vicreg": onoff(lc.use_vicreg, f"weight {lc.vicreg_weight:g}"),
        "contrastive": onoff(
            lc.use_contrastive,
            f"{where}, {sim}, τ={lc.contrastive_temperature:g}, weight {lc.contrastive_weight:g}",
        ),
    }


def build_model(cfg: Config) -> HJEPA:
    """HJEPA initialised from ``experiment.seed`` (the global RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.experiment.seed)
        return HJEPA(cfg)


def compile_model(model: HJEPA, device: torch.device) -> None:
    """``training.compile``: compile ``model.forward`` with inductor, static shapes.

    Compiling the forward compiles its backward too (AOTAutograd), so the whole forward +
    backward of the step runs as compiled graphs; the module, its parameters, state_dict keys
    and checkpoints stay as they are, and the optimizer, clipping and EMA stay eager. The token
    counts are fixed per run (trainer.data.masks), so one graph serves every batch
    (``dynamic=False``: a shape change would recompile, never silently go dynamic). The first step
    pays the compile (ViT-S/16: about a minute on a GPU host, several on a 2-core CPU).

    Raises ConfigError (naming ``training.compile``) on MPS, where inductor does not run this
    model, and on a CPU without a C++ compiler (inductor's CPU backend generates C++).
    """
    if device.type == "mps":
        raise ConfigError(
            "training.compile: true does not work on MPS (inductor cannot compile this model "
            "there); set it to false"
        )
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "g++")
        if not any(shutil.which(c) for c in (cxx, "g++", "clang++")):
            raise ConfigError(
                "training.compile: true on CPU needs a C++ compiler (g++ or clang++, or $CXX) "
                "for inductor; install one or set training.compile to false"
            )
    model.forward = torch.compile(model.forward, dynamic=False)  # type: ignore[method-assign]
