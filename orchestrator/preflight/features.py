"""What each optional feature costs: step time and peak memory with it on and off.

    toggles = feature_toggles(recipe_cfg, planned_cfg)     # [(feature, key, on in the plan)]
    items = [variant_item(key, on) for _, key, on in toggles]
    # python -m trainer --probe N --probe-variant ITEM ...  (one process times them all)
    costs = costs_from_probe(doc, toggles)                 # one FeatureCost per feature
    row.update(record_fields(costs))                       # into STATE_DIR/preflight.jsonl

The optional features are flash attention (SDPA), gradient checkpointing, the FPN and the
contrastive term; only those the recipe turns on are probed, each switched one at a time at
the planned micro-batch while the others stay as planned. A feature the plan itself turned off
(preflight drops gradient checkpointing where the batch fits without it) is probed the other
way round: switched on. The worker measures the planned config and every variant in one
process (``trainer/train/modes.py``), so all numbers of one record come from the same conditions.

The speed factor is the step time without the feature over the step time with it: above 1 the
feature makes the step faster (flash attention's ``speedup_vs_no_flash``, the conservative
runbook's criterion, is this factor), below 1 it costs time (gradient checkpointing trades
compute for memory). Pure: no I/O; ``orchestrator/preflight/probes.py`` (preflight,
``start --fit``) and ``orchestrator/night/start_probe.py`` (a night without a preflight record)
run the worker, and the morning report's table (``orchestrator/views/report/features.py``)
reads the record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from orchestrator.core.runbook import FEATURE_KEYS
from orchestrator.core.units import GB
from trainer.config import Config

# The features a recipe may switch on for speed, memory or accuracy, in the order they are
# probed (flash attention first: its factor is a success criterion).
OPTIONAL = ("flash_attention", "gradient_checkpointing", "fpn", "contrastive")
LABELS = {
    "flash_attention": "flash attention (SDPA)",
    "gradient_checkpointing": "gradient checkpointing",
    "fpn": "FPN",
    "contrastive": "contrastive term",
}


def is_on(cfg: Config, feature: str) -> bool:
    section, name = FEATURE_KEYS[feature].split(".")
    return bool(getattr(getattr(cfg, section), name))


def feature_toggles(recipe: Config, planned: Config) -> list[tuple[str, str, bool]]:
    """(feature, config key, on in ``planned``) for each optional feature ``recipe`` turns on."""
    return [(f, FEATURE_KEYS[f], is_on(planned, f)) for f in OPTIONAL if is_on(recipe, f)]


def variant_item(key: str, planned_on: bool) -> str:
    """The ``--probe-variant`` item that switches ``key`` away from the plan."""
    return f"{key}={'false' if planned_on else 'true'}"


def peak_bytes(probe: dict[str, Any]) -> int | None:
    """Peak device memory of a probe (CUDA peak allocated; MPS driver; CPU process RSS)."""
    mem = probe.get("memory") or {}
    for key in ("peak", "driver", "allocated"):
        if isinstance(mem.get(key), int | float):
            return int(mem[key])
    return None


@dataclass(frozen=True)
class Measured:
    """One configuration's probe: ms per optimizer step and peak bytes, or why there is none."""

    ms_per_step: float | None = None
    peak: int | None = None
    oom: bool = False
    error: str | None = None

    @classmethod
    def of(cls, probe: dict[str, Any] | None) -> Measured:
        if probe is None:
            return cls(error="not measured (the probe was cut short)")
        if probe.get("oom"):
            return cls(oom=True)
        if probe.get("error"):
            return cls(error=str(probe["error"]))
        ms = probe.get("ms_per_step")
        return cls(float(ms) if isinstance(ms, int | float) else None, peak_bytes(probe))

    def to_dict(self) -> dict[str, Any]:
        if self.oom:
            return {"oom": True}
        if self.error is not None:
            return {"error": self.error}
        ms = None if self.ms_per_step is None else round(self.ms_per_step, 2)
        return {"ms_per_step": ms, "peak_bytes": self.peak}

    @classmethod
    def from_dict(cls, d: Any) -> Measured:
        if not isinstance(d, dict):
            return cls(error="not recorded")
        ms, peak = d.get("ms_per_step"), d.get("peak_bytes")
        return cls(
            float(ms) if isinstance(ms, int | float) else None,
            int(peak) if isinstance(peak, int | float) else None,
            bool(d.get("oom")),
            str(d["error"]) if d.get("error") else None,
        )

    def ms_text(self) -> str:
        if self.oom:
            return "OOM"
        if self.ms_per_step is None:
            return "N/A"
        return f"{self.ms_per_step:.0f} ms"

    def peak_text(self) -> str:
        if self.oom:
            return "OOM"
        return "N/A" if self.peak is None else f"{self.peak / GB:.2f} GB"


@dataclass(frozen=True)
class FeatureCost:
    """A feature's step time and peak memory with it on and off, at the same micro-batch."""

    feature: str
    on: Measured
    off: Measured
    planned_on: bool = True  # False: the plan turned it off (so "on" was the variant)

    @property
    def speed_factor(self) -> float | None:
        """ms per step off / on (> 1: the feature makes the step faster). None: unmeasured."""
        on, off = self.on.ms_per_step, self.off.ms_per_step
        if on is None or off is None or on <= 0:
            return None
        return off / on

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "planned_on": self.planned_on,
            "on": self.on.to_dict(),
            "off": self.off.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureCost:
        return cls(
            str(d.get("feature")),
            Measured.from_dict(d.get("on")),
            Measured.from_dict(d.get("off")),
            bool(d.get("planned_on", True)),
        )

    def cells(self) -> list[str]:
        """feature, ms on, ms off, speed factor, peak on, peak off (the tables' columns)."""
        factor = self.speed_factor
        name = LABELS.get(self.feature, self.feature)
        if not self.planned_on:
            name += " (off in the plan)"
        why = self.on.error or self.off.error
        return [
            name,
            self.on.ms_text(),
            self.off.ms_text(),
            f"{factor:.2f}x" if factor is not None else ("N/A" + (f" ({why})" if why else "")),
            self.on.peak_text(),
            self.off.peak_text(),
        ]


COLUMNS = ["feature", "step on", "step off", "speed factor (off/on)", "peak on", "peak off"]


def costs_from_probe(
    doc: dict[str, Any], toggles: list[tuple[str, str, bool]]
) -> list[FeatureCost]:
    """The worker's ``--probe --probe-variant`` document (the planned config's probe with its
    variants under ``"variants"``) as one FeatureCost per toggled feature."""
    base = Measured.of(doc)
    variants = doc.get("variants") or {}
    out = []
    for feature, key, on in toggles:
        other = Measured.of(variants.get(variant_item(key, on)))
        out.append(FeatureCost(feature, base if on else other, other if on else base, on))
    return out


def probe_doc(stdout: str) -> dict[str, Any] | None:
    """The probe document from the worker's stdout: its last line when it finished, else the
    per-configuration lines it printed before it was stopped (``{"variant": label, ...}``,
    the planned config's label null). None without the planned config's probe."""
    base: dict[str, Any] | None = None
    variants: dict[str, Any] = {}
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(doc, dict):
            continue
        if "variants" in doc and "ms_per_step" in doc:
            return doc
        if "variant" in doc:
            label = doc.pop("variant")
            if label is None:
                base = doc
            else:
                variants[str(label)] = doc
    return None if base is None else {**base, "variants": variants}


def record_fields(costs: list[FeatureCost]) -> dict[str, Any]:
    """What a ``preflight.jsonl`` row holds of the feature probe: every feature's costs, and
    flash attention's two step times and speed-up (the criterion's evidence) where probed."""
    row: dict[str, Any] = {"features": [c.to_dict() for c in costs]}
    flash = next((c for c in costs if c.feature == "flash_attention"), None)
    if flash is not None:
        speedup = flash.speed_factor
        row["ms_flash_on"] = flash.on.to_dict().get("ms_per_step")
        row["ms_flash_off"] = None if flash.off.oom else flash.off.to_dict().get("ms_per_step")
        row["speedup_vs_no_flash"] = None if speedup is None else round(speedup, 3)
    return row


def costs_from_record(row: dict[str, Any]) -> list[FeatureCost]:
    feats = row.get("features")
    if not isinstance(feats, list):
        return []
    return [FeatureCost.from_dict(d) for d in feats if isinstance(d, dict)]
