"""The morning report's pictures of a night's best checkpoint, drawn beside the report.

    lines = picture_links(facts, out)   # writes <report stem>-n<N>-{attention,fpn}.png

The ending records the pictures as the night's newest ``pictures`` decision
(:mod:`orchestrator.night.pictures`); its evidence names the worker's ``pictures.npz``
(``trainer/eval/pictures.py``: fixed held-out images, the masks of the night's masking config from a
fixed seed, the target encoder's last-block attention as the mean attention each patch
receives, the FPN levels' feature norms). The PNGs (matplotlib, Agg) go beside the report like
its plots and are linked by relative paths, each with a one-line caption. When there is
nothing to draw the section says why: the night has not ended, the worker's problem, a file
that is gone or unreadable — a missing picture never stops the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from orchestrator.night.pictures import PICTURES
from orchestrator.views.report.facts import NightFacts
from orchestrator.views.snapshot import resolve_path


def recorded(f: NightFacts) -> dict[str, Any] | None:
    """The evidence of the night's newest ``pictures`` decision, or None."""
    found = [d.evidence for d in f.night.decisions if d.kind == PICTURES]
    return found[-1] if found else None


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``pictures.npz`` (no pickle), checked for the shapes drawn here."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in ("indices", "images", "masks", "attention", "fpn")}
    b = len(arrays["indices"])
    if arrays["images"].shape[0] != b or arrays["attention"].shape[0] != b:
        raise ValueError(f"{path.name}: arrays disagree on the number of images")
    return arrays


def _grid(rows: list[tuple[str, list[np.ndarray], str | None]], path: Path, title: str) -> Path:
    """One row of panels per (label, images, colormap or None for RGB)."""
    cols = max(len(imgs) for _, imgs, _ in rows)
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(1.9 * cols + 0.6, 1.9 * len(rows) + 0.5), squeeze=False
    )
    for r, (label, imgs, cmap) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                ax.imshow(imgs[c], cmap=cmap, interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


def draw(arrays: dict[str, np.ndarray], stem: Path) -> list[tuple[Path, str]]:
    """Write ``<stem>-attention.png`` (image, masks, attention) and, when FPN maps are present,
    ``<stem>-fpn.png`` (image, masks, one row per level); (path, caption) each."""
    images = list(arrays["images"])
    shown = ", ".join(f"#{int(i)}" for i in arrays["indices"])
    masks = list(arrays["masks"])
    made = [
        (
            _grid(
                [
                    ("image", images, None),
                    ("masks", masks, None),
                    ("attention", list(arrays["attention"]), "inferno"),
                ],
                stem.with_name(f"{stem.name}-attention.png"),
                f"held-out images {shown}: masks, and the last block's attention",
            ),
            "Top: the image; middle: the masks of the night's masking config (fixed seed; "
            "context bright, other patches dimmed, target blocks red); bottom: the best "
            "checkpoint's target encoder, last block, heads averaged — the mean attention each "
            "patch receives (brighter = more).",
        ),
    ]
    levels = arrays["fpn"]
    if len(levels):
        rows: list[tuple[str, list[np.ndarray], str | None]] = [
            ("image", images, None),
            ("masks", masks, None),
        ]
        rows += [(f"level {i}", list(level), "viridis") for i, level in enumerate(levels)]
        made.append(
            (
                _grid(rows, stem.with_name(f"{stem.name}-fpn.png"), "FPN feature norm per level"),
                "FPN feature-norm maps per hierarchy level (each patch's fused feature norm "
                "before the level's output norm; level 0 is fused down to the shallowest stage).",
            )
        )
    return made


def picture_links(f: NightFacts, out: Path) -> list[str]:
    """The night's pictures section: links with captions, or why there are none."""
    ev = recorded(f)
    if ev is None:
        return ["_Pictures missing: none recorded yet (they are drawn when the night ends)._", ""]
    if ev.get("problem"):
        return [f"_Pictures missing: {ev['problem']}._", ""]
    path = resolve_path(f.state_dir, ev.get("path"))
    if path is None:
        return [f"_Pictures missing: `{ev.get('path')}` is gone._", ""]
    try:
        made = draw(load_arrays(path), out.parent / f"{out.stem}-n{f.night.index + 1}")
    except Exception as exc:  # a picture never stops the report
        return [
            f"_Pictures missing: `{path}` could not be drawn ({type(exc).__name__}: {exc})._",
            "",
        ]
    where = f"`{Path(str(ev.get('checkpoint'))).name}`"
    if ev.get("epoch") is not None:
        where += f" (epoch {ev['epoch']}, step {ev.get('step')})"
    lines = [
        f"From the best checkpoint {where}; held-out images "
        f"{', '.join(str(i) for i in ev.get('indices') or [])} of the evaluation split, the "
        "same every night.",
        "",
    ]
    for png, caption in made:
        lines += [f"![{png.stem.rsplit('-', 1)[-1]}]({png.name})", "", f"_{caption}_", ""]
    return lines
