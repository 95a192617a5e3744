"""python bench/quality.py --config configs/demo_conservative.yaml [--data DIR] [--set k=v ...]

More options: [--epochs N] [--epoch-size N] [--eval-every N] [--run-dir DIR] [--json].

Does the recipe learn? Trains the real worker (``python -m trainer``, a subprocess) and prints,
for kNN@20, kNN@1 and the linear probe, the random encoder (epoch 0) → the best evaluation →
the final one, with the gains over the random encoder, the L2 the probe chose at each
evaluation, the wall and CPU time, and whether the final score fell back more than 2 points
below the best (a recipe that peaks mid-run).

``--data DIR`` trains and evaluates on an ImageFolder (``DIR/train/<class>/``,
``DIR/val/<class>/``; e.g. ``python -m trainer.data.image_sets digits DIR``) instead of the config's
datasets; the epoch is then ``--epoch-size`` samples (default: the demo's 4096, so a run takes
the same number of steps as on the demo data). Without ``--data`` the config's datasets are
used (the demo configs: synthetic glyphs). ``--eval-every`` (default 1) evaluates every epoch
so a fall-back shows; the worker's other settings are the config's (``--set`` to change them).

Exit status: 0 when the run finished (whatever the scores), 1 when the worker failed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.events import EVENTS_FILE  # noqa: E402
from trainer.events_read import read_events  # noqa: E402

FALL_BACK_POINTS = 2.0  # final this far below the best counts as falling back
METRICS = (("knn@20", ("knn", "20")), ("knn@1", ("knn", "1")), ("probe", ("linear_probe",)))


def _value(ev: dict[str, Any], path: tuple[str, ...]) -> float | None:
    v: Any = ev
    for key in path:
        v = v.get(key) if isinstance(v, dict) else None
    return None if v is None else float(v)


def summarise(evals: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric: init (first eval), best (and its epoch), final, gains in points, fell_back."""
    out: dict[str, dict[str, Any]] = {}
    for name, path in METRICS:
        series = [(e["epoch"], _value(e, path)) for e in evals]
        series = [(ep, v) for ep, v in series if v is not None]
        if not series:
            continue
        init, final = series[0][1], series[-1][1]
        best_epoch, best = max(series, key=lambda t: t[1])
        out[name] = {
            "init": init,
            "best": best,
            "best_epoch": best_epoch,
            "final": final,
            "gain_best_pts": 100 * (best - init),
            "gain_final_pts": 100 * (final - init),
            "fell_back": 100 * (best - final) > FALL_BACK_POINTS,
            "series": [round(v, 4) for _, v in series],
        }
    l2 = [e.get("linear_probe_l2") for e in evals if e.get("linear_probe") is not None]
    if "probe" in out and all(v is not None for v in l2):
        out["probe"]["l2_series"] = l2  # the L2 the probe chose at each evaluation
    return out


def worker_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    sets = [f"evaluation.eval_frequency={args.eval_every}"]
    if args.data:
        path = Path(args.data).resolve()
        sets += [
            f"data.datasets=[{{name: imagefolder, path: '{path}'}}]",
            f"data.epoch_size={args.epoch_size}",
        ]
    if args.epochs is not None:
        sets.append(f"training.epochs={args.epochs}")
    sets += args.set
    cmd = [sys.executable, "-m", "trainer", "--config", str(args.config), "--run-dir", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def run(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run(
        worker_command(args, run_dir), capture_output=True, text=True, env=env, cwd=ROOT
    )
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    events = read_events(run_dir / EVENTS_FILE)
    started = next((e for e in events if e["type"] == "started"), {})
    ended = [e for e in events if e["type"] in ("finished", "step")]
    return {
        "config": str(args.config),
        "data": str(args.data) if args.data else "config",
        "run_dir": str(run_dir),
        "returncode": proc.returncode,
        "stderr_tail": proc.stderr[-2000:] if proc.returncode else "",
        "epochs": started.get("epochs"),
        "steps": max((e.get("step", 0) for e in ended), default=0),
        "wall_s": round(wall, 1),
        "cpu_s": round((cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), 1),
        "metrics": summarise([e for e in events if e["type"] == "eval"]),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"{result['config']} on {result['data']}: {result['epochs']} epochs,"
        f" {result['steps']} steps, {result['wall_s']} s wall, {result['cpu_s']} s CPU"
    ]
    for name, m in result["metrics"].items():
        lines.append(
            f"  {name:7s} {100 * m['init']:5.1f} → best {100 * m['best']:5.1f}"
            f" (epoch {m['best_epoch']}) → final {100 * m['final']:5.1f}"
            f"   gain {m['gain_final_pts']:+.1f} pts" + ("   FELL BACK" if m["fell_back"] else "")
        )
        lines.append(f"          per eval: {' '.join(f'{100 * v:.1f}' for v in m['series'])}")
        if m.get("l2_series"):
            lines.append(f"          probe L2: {' '.join(f'{v:.0e}' for v in m['l2_series'])}")
    if result["returncode"]:
        lines.append(f"worker failed (exit {result['returncode']}):\n{result['stderr_tail']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo_conservative.yaml")
    p.add_argument("--data", help="ImageFolder root (train/, val/) instead of the config's data")
    p.add_argument("--epoch-size", type=int, default=4096, help="samples per epoch with --data")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--eval-every", type=int, default=1, help="evaluation.eval_frequency")
    p.add_argument("--run-dir", type=Path, help="keep the run here (default: a temporary dir)")
    p.add_argument("--set", action="append", default=[], help="worker --set (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_dir is not None:
        args.run_dir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.run_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
            result = run(args, Path(tmp))
    print(json.dumps(result) if args.json else render(result))
    return 0 if result["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
