"""The config sections of what is learned: ``model`` (encoder, FPN, predictor, EMA), ``masking``
and ``loss``.

Upstream's two spellings of the FPN switch (``model.use_fpn``, ``model.fpn.use_fpn``) fold into
``model.use_fpn``; an encoder preset fixes the encoder sizes (set ``encoder_type: custom`` to
choose them). RoPE accepts only its "off" value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainer.config.base import Strict

ENCODER_PRESETS: dict[str, dict[str, int]] = {
    "vit_tiny_patch16_224": {"embed_dim": 192, "depth": 12, "num_heads": 3, "patch_size": 16},
    "vit_small_patch16_224": {"embed_dim": 384, "depth": 12, "num_heads": 6, "patch_size": 16},
    "vit_base_patch16_224": {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16},
}


class FPNConfig(Strict):
    use_fpn: bool | None = Field(None, description="Alias of model.use_fpn (upstream spelling).")
    feature_dim: int | None = Field(None, description="FPN width; default: encoder embed_dim.")
    fusion_method: Literal["add", "concat"] = "add"


class RopeConfig(Strict):
    use_rope: Literal[False] = Field(False, description="RoPE is not implemented: only false.")
    theta: float = 10000.0


class PredictorConfig(Strict):
    depth: int = Field(6, ge=1)
    num_heads: int = Field(6, ge=1)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    embed_dim: int | None = Field(
        None, ge=1, description="Predictor width; default: encoder width."
    )


class EMAConfig(Strict):
    momentum: float = Field(0.996, ge=0.0, le=1.0, description="Target-encoder EMA at start.")
    momentum_end: float = Field(1.0, ge=0.0, le=1.0, description="EMA at the last step.")
    momentum_warmup_epochs: int = Field(
        0, ge=0, description="Hold `momentum` this many epochs, then ramp linearly to the end."
    )


class ModelConfig(Strict):
    encoder_type: str = Field(
        "vit_small_patch16_224",
        description="A preset (vit_tiny/small/base_patch16_224) or 'custom' (set the sizes).",
    )
    embed_dim: int = Field(384, ge=1)
    depth: int = Field(12, ge=1)
    num_heads: int = Field(6, ge=1)
    patch_size: int = Field(16, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    num_hierarchies: int = Field(3, ge=1, le=4, description="Target levels (1 = plain I-JEPA).")
    use_flash_attention: bool = Field(True, description="SDPA attention instead of explicit.")
    use_layerscale: bool = False
    layerscale_init: float = 1e-5
    use_gradient_checkpointing: bool = False
    use_fpn: bool = False
    fpn: FPNConfig = Field(default_factory=FPNConfig)
    rope: RopeConfig = Field(default_factory=RopeConfig)
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    ema: EMAConfig = Field(default_factory=EMAConfig)

    @model_validator(mode="after")
    def _resolve(self) -> ModelConfig:
        preset = ENCODER_PRESETS.get(self.encoder_type)
        if preset is None and self.encoder_type != "custom":
            raise ValueError(
                f"encoder_type {self.encoder_type!r} is unknown; use one of "
                f"{sorted(ENCODER_PRESETS)} or 'custom'"
            )
        if preset is not None:
            for key, value in preset.items():
                if key in self.model_fields_set and getattr(self, key) != value:
                    raise ValueError(
                        f"{key}={getattr(self, key)} contradicts encoder_type "
                        f"{self.encoder_type} ({key}={value}); use encoder_type: custom"
                    )
                object.__setattr__(self, key, value)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads")
        if self.fpn.use_fpn is not None:
            if "use_fpn" in self.model_fields_set and self.fpn.use_fpn != self.use_fpn:
                raise ValueError("model.use_fpn and model.fpn.use_fpn disagree")
            object.__setattr__(self, "use_fpn", self.fpn.use_fpn)
            object.__setattr__(self.fpn, "use_fpn", None)
        return self


# --------------------------------------------------------------------------------------------
# masking
class MaskingConfig(Strict):
    num_masks: int = Field(4, ge=1, description="Target blocks per image.")
    mask_scale: tuple[float, float] = (0.15, 0.2)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    num_context_masks: Literal[1] = 1
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_keep: int = Field(4, ge=1, description="Fewest context tokens kept.")
    context_tokens: int | None = Field(
        None,
        ge=1,
        description="Context patches per image, the same for every batch (static "
        "shapes); unset: the 5% quantile of the context size drawn from the scales.",
    )
    target_tokens: int | None = Field(
        None,
        ge=1,
        description="Patches per target block, the same for every batch; unset: "
        "round(mean(mask_scale) * patches).",
    )


# --------------------------------------------------------------------------------------------
# loss
class VICRegCoeffs(Strict):
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0


class LossConfig(Strict):
    type: Literal["smoothl1", "mse", "cjepa", "combined"] = Field(
        "smoothl1",
        description="smoothl1/mse: the JEPA distance; cjepa: JEPA (jepa_loss_type) + "
        "contrastive while use_contrastive is true (false: the plain JEPA loss of "
        "jepa_loss_type); combined: JEPA + VICReg. VICReg follows use_vicreg in every case.",
    )
    jepa_loss_type: Literal["smoothl1", "mse"] = "smoothl1"
    jepa_weight: float = 1.0
    hierarchy_weights: list[float] = Field(default_factory=lambda: [1.0, 0.7, 0.5])
    normalize_embeddings: bool = False
    use_vicreg: bool = True
    vicreg_weight: float = Field(0.01, ge=0.0, description="Weight of the VICReg term.")
    vicreg: VICRegCoeffs = Field(default_factory=VICRegCoeffs)
    use_contrastive: bool = Field(
        False,
        description="Add the NT-Xent term (two augmented views). Under type cjepa, false means "
        "the plain JEPA loss of jepa_loss_type (+ VICReg per use_vicreg): the contrastive "
        "fallback switches only this key.",
    )
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 0.1
    use_cosine_similarity: bool = True
    contrastive_on_context: bool = False

    @property
    def distance(self) -> str:
        return self.jepa_loss_type if self.type in ("cjepa", "combined") else self.type
