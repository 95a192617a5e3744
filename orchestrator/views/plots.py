"""PNG plots for the morning report (matplotlib, Agg backend; no display needed).

    path = plot_loss(Path("var/reports/x-loss.png"), run, markers)

Each function takes a night's :class:`~orchestrator.views.snapshot.RunView` (all events and samples
of its attempts) and writes one PNG, returning its path — or None, writing nothing, when there
is no data to draw (the report then says so instead of linking an empty picture).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from orchestrator.views.snapshot import GB, RunView

LEVEL_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
MARKER_COLOURS = {"oom": "tab:red", "nonfinite": "tab:purple", "slow": "tab:olive"}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


def plot_loss(path: Path, run: RunView, markers: Sequence[tuple[float, str]] = ()) -> Path | None:
    """Loss (total and per level) over optimizer steps, one segment per attempt (a rollback
    shows as a segment starting further left); ``markers`` are (unix time, label) fallbacks,
    drawn as dashed lines at the last step logged before them."""
    if not run.steps:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.2))
    attempts = sorted({p.attempt for p in run.steps})
    for i, att in enumerate(attempts):
        pts = [p for p in run.steps if p.attempt == att]
        xs = [p.step for p in pts]
        ax.plot(xs, [p.loss for p in pts], color="black", lw=1.6, label="total" if i == 0 else None)
        for lv in range(max(len(p.levels) for p in pts)):
            ys = [p.levels[lv] if len(p.levels) > lv else float("nan") for p in pts]
            ax.plot(
                xs,
                ys,
                color=LEVEL_COLOURS[lv % len(LEVEL_COLOURS)],
                lw=1.0,
                alpha=0.85,
                label=f"level {lv}" if i == 0 else None,
            )
    for ts, label in markers:
        before = [p for p in run.steps if p.ts <= ts]
        if not before:
            continue
        x = before[-1].step
        trigger = label.split(":")[0]
        ax.axvline(x, color=MARKER_COLOURS.get(trigger, "tab:gray"), ls="--", lw=1.2)
        ax.annotate(
            trigger,
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -2),
            textcoords="offset points",
            va="top",
            ha="left",
            fontsize=8,
            color=MARKER_COLOURS.get(trigger, "dimgray"),
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8},
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss per level (dashed: fallbacks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, path)


def plot_knn(
    path: Path,
    run: RunView,
    baseline_knn20: float | None = None,
    baseline_probe: float | None = None,
) -> Path | None:
    """kNN accuracy (k = 1, 5, 20) and linear probe over epochs; random-init levels dashed."""
    evals = [e for e in run.evals if isinstance(e.get("knn"), dict)]
    if not evals:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    epochs = [e.get("epoch", 0) for e in evals]
    for k, colour in (("1", "tab:blue"), ("5", "tab:orange"), ("20", "tab:green")):
        ys = [100 * e["knn"][k] if k in e["knn"] else float("nan") for e in evals]
        ax.plot(epochs, ys, "o-", color=colour, label=f"kNN k={k}")
    probes = [
        (e.get("epoch", 0), 100 * e["linear_probe"])
        for e in evals
        if isinstance(e.get("linear_probe"), int | float)
    ]
    if probes:
        ax.plot(*zip(*probes, strict=True), "s", color="black", ms=7, label="linear probe")
    if baseline_knn20 is not None:
        ax.axhline(
            100 * baseline_knn20, color="tab:green", ls=":", lw=1, label="random init kNN k=20"
        )
    if baseline_probe is not None:
        ax.axhline(
            100 * baseline_probe, color="black", ls=":", lw=1, label="random init linear probe"
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Evaluation over epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, path)


def plot_memory(
    path: Path,
    run: RunView,
    t0: float | None,
    ceiling_gb: float | None,
    warning_gb: float | None = None,
    device_ceiling_gb: float | None = None,
) -> Path | None:
    """Memory over time (hours since ``t0``): worker tree RSS, device memory, swap, GPU; the
    runbook's host ceiling (and warning level) and the device ceiling (when the device's total
    is known) as horizontal lines."""
    samples = list(run.samples)
    dev = list(run.device_series)
    if not samples and not dev:
        return None
    start = t0 if t0 is not None else min([s["ts"] for s in samples] + [t for t, _ in dev])
    fig, ax = plt.subplots(figsize=(9, 4))

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(s["ts"], s[key]) for s in samples if isinstance(s.get(key), int | float)]
        return [(t - start) / 3600 for t, _ in pts], [v / GB for _, v in pts]

    for key, label, colour in (
        ("tree_rss", "worker + loaders (RSS)", "tab:blue"),
        ("gpu_used", "GPU used (NVML)", "tab:orange"),
        ("swap_used", "swap used", "tab:gray"),
    ):
        xs, ys = series(key)
        if xs:
            ax.plot(xs, ys, lw=1.2, color=colour, label=label)
    if dev:
        ax.plot(
            [(t - start) / 3600 for t, _ in dev],
            [v / GB for _, v in dev],
            lw=1.0,
            color="tab:purple",
            label="device memory (worker)",
        )
    if ceiling_gb is not None:
        label = f"host ceiling {ceiling_gb:g} GB"
        ax.axhline(ceiling_gb, color="tab:red", ls="--", lw=1.2, label=label)
    if device_ceiling_gb is not None:
        label = f"device ceiling {device_ceiling_gb:.1f} GB"
        ax.axhline(device_ceiling_gb, color="tab:purple", ls="--", lw=1.2, label=label)
    if warning_gb is not None:
        ax.axhline(warning_gb, color="goldenrod", ls=":", lw=1, label=f"warning {warning_gb:g} GB")
    ax.set_xlabel("hours since the night started")
    ax.set_ylabel("GB")
    ax.set_title("Memory over time")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, path)


def plot_epoch_times(
    path: Path, run: RunView, pace_s: float | None, warning_minutes: float | None = None
) -> Path | None:
    """Minutes per epoch (bars, one colour per attempt) against the pace needed to finish in
    the window (``pace_s``: (window − final eval) / planned epochs) and the runbook warning."""
    epochs = [e for e in run.epochs if isinstance(e.get("seconds"), int | float)]
    if not epochs:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    attempts = sorted({e["attempt"] for e in epochs})
    cmap = plt.get_cmap("tab10")
    for i, att in enumerate(attempts):
        pts = [e for e in epochs if e["attempt"] == att]
        ax.bar(
            [e["epoch"] for e in pts],
            [e["seconds"] / 60 for e in pts],
            width=0.8,
            color=cmap(i % 10),
            alpha=0.8,
            label=f"attempt {att}",
        )
    if pace_s is not None:
        ax.axhline(
            pace_s / 60,
            color="tab:red",
            ls="--",
            lw=1.2,
            label=f"pace needed {pace_s / 60:.1f} min",
        )
    if warning_minutes is not None:
        ax.axhline(
            warning_minutes,
            color="goldenrod",
            ls=":",
            lw=1,
            label=f"warning {warning_minutes:g} min",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("minutes")
    ax.set_title("Epoch time against the pace needed to finish")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, path)
