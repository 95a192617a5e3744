"""Fit a night to this machine before it starts: micro-batch, accumulation and epochs.

    hjepa-night preflight --config configs/demo_conservative.yaml --window 4m --apply var/state.json

Pure planning (no I/O) plus the one place that writes a plan into a plan file or a state file.

- **Micro-batch**: the candidates are the divisors of the recipe's effective batch
  (micro-batch × accumulation), so accumulation = effective / micro keeps the effective batch
  exactly. The caller probes them in ascending order from the recipe's own micro-batch and stops
  at the first OOM or the first peak over the memory ceiling ("grow until it breaks"); when the
  recipe's micro-batch itself breaks, it walks down. ``choose_micro`` then backs off: the largest
  probed candidate whose peak stays under ``ceiling × (1 - margin)``. The ceiling is the one
  the supervisor will hold the night to (:func:`probe_ceiling`): on a GPU or MPS the device
  ceiling, ``memory.device_fraction`` of the total the probe reports (an 80 GB card is probed
  up to ~74 GB, not to a 32 GB Mac's 28); on a CPU, where the probe's peak is the process RSS,
  the host ceiling ``memory.ceiling_gb``.
- **Gradient checkpointing**: a recipe that turns it on is probed WITHOUT it first; when the
  recipe's micro-batch fits that way, checkpointing is turned off (the same maths for about a
  third less compute); otherwise the probe is repeated with it and the faster fit per optimizer
  step wins (``prefer_checkpointing``). On a large GPU this is what makes the aggressive
  recipe's "checkpointing for a 32 GB Mac" not cost a third of the night.
- **Epochs**: ``fit_epochs`` counts the epochs whose planned night (the forecast's cost model,
  ``policy.forecast.planned_night_s``: train time + checkpoints + the baseline and periodic
  evals + the final-eval reserve) fits into ``window - margin × window``, never more than the
  recipe asks (a plan shortens a night; it does not lengthen a recipe) and never fewer than 1.
- **What each feature costs**: at the chosen micro-batch one more worker process times the
  planned config and, one at a time, each optional feature the recipe turns on switched the
  other way (``orchestrator/preflight/features.py``); flash attention's off/on ratio is
  recorded as ``speedup_vs_no_flash`` (the runbooks' criterion reads it).
- **Apply**: ``apply_overrides`` writes ``data.batch_size``, ``training.accumulation_steps``,
  ``training.epochs`` (and ``model.use_gradient_checkpointing: false`` when it was turned off)
  as base overrides of every not-yet-started night that runs the config, in
  a plan file (``nights[i].overrides``) or a state file (``nights[i].overrides``), so the worker's
  LR and EMA schedules are planned for the real length from step 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.datafiles import PROJECT_ROOT
from orchestrator.core.runbook import FEATURE_KEYS, MemoryLimits
from orchestrator.core.units import GB
from orchestrator.core.userfile import UserFileError, edit_yaml
from orchestrator.policy import forecast
from orchestrator.preflight.features import FeatureCost, record_fields

FIT_LOG = "preflight.jsonl"


@dataclass(frozen=True)
class BatchTrial:
    """One probe at a micro-batch: peak memory in bytes (None = unreadable) or an OOM."""

    micro: int
    peak: int | None
    oom: bool = False
    ms_per_step: float | None = None
    total: int | None = None  # the device's own memory the probe reported (None: a CPU)


@dataclass
class NightFit:
    """What the recipe asks vs what fits, with the measurements behind it."""

    recipe_micro: int
    recipe_accum: int
    recipe_epochs: int
    micro: int
    accum: int
    epochs: int
    epoch_s: float
    eval_s: float
    checkpoint_s: float
    night_s: float
    window_s: float
    trials: list[BatchTrial] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)  # the worker's --probe JSON at ``micro``
    # Gradient checkpointing: None = the recipe does not use it; False = turned off (the
    # effective batch fits without it, and it is faster); True = kept (it had to be).
    checkpointing: bool | None = None
    trials_checkpointed: list[BatchTrial] = field(default_factory=list)
    # Each optional feature the recipe turns on, on and off at the chosen micro-batch
    # (``orchestrator/preflight/features.py``); empty when it turns none on.
    features: list[FeatureCost] = field(default_factory=list)

    @property
    def speedup_vs_no_flash(self) -> float | None:
        """Step time with flash attention off over on, at the planned batch (None: unmeasured)."""
        flash = next((c for c in self.features if c.feature == "flash_attention"), None)
        return None if flash is None else flash.speed_factor

    def overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "data.batch_size": self.micro,
            "training.accumulation_steps": self.accum,
            "training.epochs": self.epochs,
        }
        if self.checkpointing is False:
            out[CHECKPOINTING] = False
        return out


CHECKPOINTING = FEATURE_KEYS["gradient_checkpointing"]
FLASH = FEATURE_KEYS["flash_attention"]


def prefer_checkpointing(
    plain: tuple[int | None, float | None], checkpointed: tuple[int | None, float | None]
) -> bool:
    """Whether to keep gradient checkpointing, from the best fit without it and with it, each
    (micro-batch or None when nothing fits, ms per optimizer step at that micro-batch).
    Checkpointing only trades compute for memory (same maths, ~⅓ more compute), so it is kept
    only when nothing fits without it, or when the smaller micro-batch that fits without it is
    measured slower per optimizer step than the larger one with it."""
    (micro, ms), (micro_c, ms_c) = plain, checkpointed
    if micro_c is None:
        return False
    if micro is None:
        return True
    return ms is not None and ms_c is not None and ms_c < ms


def micro_candidates(effective: int) -> list[int]:
    """Divisors of the effective batch, ascending (each keeps it exactly with accumulation)."""
    return [d for d in range(1, effective + 1) if effective % d == 0]


def probe_order(recipe_micro: int, effective: int) -> tuple[list[int], list[int]]:
    """(grow: candidates ≥ the recipe's micro-batch, ascending; shrink: the rest, descending)."""
    cands = micro_candidates(effective)
    grow = [c for c in cands if c >= recipe_micro]
    shrink = sorted((c for c in cands if c < recipe_micro), reverse=True)
    return grow, shrink


def probe_ceiling(memory: MemoryLimits, trials: list[BatchTrial]) -> float:
    """The ceiling in bytes the probes' peaks are held to: the device ceiling when a probe
    reported its device's total, else the host ceiling (a CPU probe's peak is its RSS)."""
    total = next((t.total for t in trials if t.total), None)
    device = memory.device_ceiling(total)
    return device if device is not None else memory.ceiling_gb * GB


def breaks(trial: BatchTrial, ceiling_bytes: float) -> bool:
    return trial.oom or (trial.peak is not None and trial.peak > ceiling_bytes)


def choose_micro(trials: list[BatchTrial], ceiling_bytes: float, margin: float) -> int | None:
    """Largest probed micro-batch that did not OOM and peaked under ceiling × (1 - margin).

    A trial without a memory reading counts as fitting only if it did not OOM. None when
    nothing fits.
    """
    limit = ceiling_bytes * (1.0 - margin)
    ok = [t.micro for t in trials if not t.oom and (t.peak is None or t.peak <= limit)]
    return max(ok) if ok else None


def fit_epochs(
    *,
    recipe_epochs: int,
    epoch_s: float,
    eval_s: float,
    eval_every: int,
    checkpoint_s: float,
    window_s: float,
    final_eval_s: float,
    margin: float,
) -> int:
    """Epochs that fit: the most whose planned night (:func:`night_seconds`) stays within the
    window less ``margin × window``. Capped at the recipe; at least 1."""
    budget = window_s * (1.0 - margin)
    best = 1
    for n in range(1, recipe_epochs + 1):
        if night_seconds(n, epoch_s, eval_s, eval_every, checkpoint_s, final_eval_s) <= budget:
            best = n
    return best


# Projected length of a night of N epochs: the forecast's cost model, under preflight's name.
night_seconds = forecast.planned_night_s


def estimate_eval_s(img_per_s: float, eval_images: int, probe_s: float) -> float:
    """Eval cost: forward passes over the eval images (a forward costs about a third of a
    training step per image) plus the linear probe's fits (``probe_s``: trainer.eval.linear_probe's
    bound for this machine and size)."""
    if img_per_s <= 0:
        return 0.0
    return eval_images / (3.0 * img_per_s) + max(0.0, probe_s)


def estimate_checkpoint_s(nbytes: int, write_bytes_per_s: float = 200e6) -> float:
    return nbytes / write_bytes_per_s


# ------------------------------------------------------------------------------------ apply
class ApplyError(RuntimeError):
    pass


def _same_config(a: str, b: str) -> bool:
    def norm(p: str) -> Path:
        q = Path(p)
        return (q if q.is_absolute() else PROJECT_ROOT / q).resolve()

    return norm(a) == norm(b)


def apply_overrides(target: str | Path, config: str, overrides: dict[str, Any]) -> list[str]:
    """Write ``overrides`` into every pending night of ``target`` (a plan YAML or a state JSON)
    that runs ``config``; returns the names of the nights changed. Raises ApplyError naming the
    file when it cannot be read or no pending night runs the config."""
    path = Path(target)
    if not path.is_file():
        raise ApplyError(f"--apply: {path} does not exist (a plan file or a state.json)")
    if path.suffix == ".json":
        return _apply_state(path, config, overrides)
    changed: list[str] = []

    def edit(doc: Any) -> bool:
        nights = doc.get("nights") if isinstance(doc, dict) else None
        if not isinstance(nights, list):
            raise ApplyError(f"--apply: {path} has no 'nights' list")
        for i, night in enumerate(nights):
            if isinstance(night, dict) and _same_config(str(night.get("config", "")), config):
                if not isinstance(night.get("overrides"), dict):
                    night["overrides"] = {}
                night["overrides"].update(overrides)
                changed.append(str(night.get("name", f"night {i + 1}")))
        if not changed:
            raise ApplyError(f"--apply: no night in {path} runs {config}")
        return True

    try:
        edit_yaml(path, edit)
    except UserFileError as exc:
        raise ApplyError(f"--apply: {exc}") from None
    return changed


def _apply_state(path: Path, config: str, overrides: dict[str, Any]) -> list[str]:
    from orchestrator.core.state import StateError, StateStore

    store = StateStore(path.parent)
    if store.path.resolve() != path.resolve():
        raise ApplyError(f"--apply: {path} is not the state file of {path.parent}")
    try:
        state = store.load(set_aside=False)
    except StateError as exc:
        raise ApplyError(f"--apply: {exc}") from exc
    changed = []
    for night in state.nights:
        if night.status == "pending" and _same_config(night.config, config):
            night.overrides.update(overrides)
            changed.append(night.name)
    if not changed:
        raise ApplyError(f"--apply: no pending night in {path} runs {config}")
    store.save(state)
    return changed


def record_fit(state_dir: str | Path, night_config: str, fit: NightFit, target: str | None) -> None:
    """Append what preflight planned to ``STATE_DIR/preflight.jsonl`` (the report's source for
    "planned vs measured" when ``target`` says where it was applied, and for the feature
    costs and the flash speed-up either way)."""
    row = {
        "config": night_config,
        "source": "preflight",
        "applied_to": target,
        "epochs": fit.epochs,
        "micro": fit.micro,
        "accum": fit.accum,
        "checkpointing": fit.checkpointing,
        "recipe_epochs": fit.recipe_epochs,
        "epoch_s": round(fit.epoch_s, 2),
        "night_s": round(fit.night_s, 1),
        "window_s": fit.window_s,
    }
    if fit.features:
        row["device"] = fit.probe.get("device")
        row.update(record_fields(fit.features))
    append_record(state_dir, row)


def append_record(state_dir: str | Path, row: dict[str, Any]) -> None:
    """One row appended to ``STATE_DIR/preflight.jsonl``."""
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    with (d / FIT_LOG).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def read_fits(state_dir: str | Path) -> list[dict[str, Any]]:
    """The rows ``record_fit`` wrote (unreadable lines skipped)."""
    path = Path(state_dir) / FIT_LOG
    rows: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return rows
    for line in lines:
        try:
            rows.append(dict(json.loads(line)))
        except (ValueError, TypeError):
            continue
    return rows
