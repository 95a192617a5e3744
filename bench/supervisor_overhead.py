"""Supervisor overhead: worker throughput with and without the supervisor, same config.

    python bench/supervisor_overhead.py --config configs/demo_conservative.yaml \
        [--runbook runbooks/demo.yaml] [--repeats 2] [--set key=value ...] [--json OUT]

Runs the worker (``python -m trainer``) alternately bare (a plain subprocess, nobody reading
its events) and under :class:`orchestrator.night.supervisor.Supervisor` (tailing events every 0.5 s,
sampling the process tree every ``sampling_interval_s``, asking the policy each tick), the
same number of times, interleaved (the order flips every repeat) so that drifting machine
load hits both alike. For each run
it reports the mean ``img_per_s`` of the worker's ``step`` events (the first step of each run
is dropped: warm-up), and for supervised runs the CPU seconds the supervisor itself used
against the worker's. Prints one table and, with ``--json``, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.core.runbook import default_runbook_for, load_runbook  # noqa: E402
from orchestrator.core.system import System  # noqa: E402
from orchestrator.night.supervisor import Supervisor  # noqa: E402
from orchestrator.policy import ConfigFacts, NightHistory, decide  # noqa: E402
from trainer.events import read_events  # noqa: E402


def throughput(run_dir: Path) -> float | None:
    steps = [e["img_per_s"] for e in read_events(run_dir / "events.jsonl") if e["type"] == "step"]
    steps = steps[1:]
    return statistics.fmean(steps) if steps else None


def bare(argv: list[str], run_dir: Path) -> tuple[float | None, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(run_dir / "worker.log", "wb") as log:
        subprocess.run(
            [*argv, "--run-dir", str(run_dir)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return throughput(run_dir), 0.0


def supervised(argv: list[str], run_dir: Path, rb_path: str) -> tuple[float | None, float]:
    rb = load_runbook(rb_path)
    facts = ConfigFacts(micro_batch=1, accum_steps=1, lr=1.0, epochs=1, eval_frequency=1)
    hist = NightHistory(
        attempts=1, attempts_without_progress=0, config=facts, base_effective_batch=1
    )
    deadline = time.time() + 10 * 3600
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    sup = Supervisor(
        System(),
        rb,
        run_dir=run_dir,
        argv=[*argv, "--run-dir", str(run_dir)],
        cwd=ROOT,
        deadline=deadline,
        env={"PYTHONPATH": str(ROOT)},
        decide=lambda o: decide(o, hist, rb, time.time(), deadline),
    )
    sup.launch()
    out = sup.run()
    cpu = sum(me.cpu_times()[:2]) - cpu0
    if out.exit_kind != "finished":
        print(f"warning: supervised run ended {out.exit_kind}: {out.message}", file=sys.stderr)
    return throughput(run_dir), cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo_conservative.yaml")
    p.add_argument("--runbook", default=None)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json", default=None)
    a = p.parse_args()
    rb = a.runbook or str(default_runbook_for(a.config))
    argv = [sys.executable, "-m", "trainer", "--config", str(Path(a.config).resolve())]
    for item in a.overrides:
        argv += ["--set", item]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="supbench-") as tmp:
        for i in range(a.repeats):
            order = ("bare", "supervised") if i % 2 == 0 else ("supervised", "bare")
            for mode in order:
                run_dir = Path(tmp) / f"{mode}-{i}"
                run_dir.mkdir()
                t0 = time.monotonic()
                if mode == "bare":
                    ips, cpu = bare(argv, run_dir)
                else:
                    ips, cpu = supervised(argv, run_dir, rb)
                wall = time.monotonic() - t0
                rows.append(
                    {
                        "mode": mode,
                        "repeat": i,
                        "img_per_s": ips,
                        "wall_s": wall,
                        "supervisor_cpu_s": cpu,
                    }
                )
                print(
                    f"{mode:>10} #{i}: {ips or float('nan'):8.2f} img/s  wall {wall:6.1f} s"
                    + (f"  supervisor CPU {cpu:.2f} s" if mode == "supervised" else "")
                )
    mean = {
        m: statistics.fmean(
            [
                float(r["img_per_s"])
                for r in rows  # type: ignore[arg-type]
                if r["mode"] == m and r["img_per_s"]
            ]
        )
        for m in ("bare", "supervised")
    }
    sup_rows = [r for r in rows if r["mode"] == "supervised"]
    cpu_share = statistics.fmean(
        float(r["supervisor_cpu_s"]) / float(r["wall_s"]) for r in sup_rows
    )  # type: ignore[arg-type]
    delta = (mean["supervised"] - mean["bare"]) / mean["bare"] * 100
    print(
        f"bare {mean['bare']:.2f} img/s, supervised {mean['supervised']:.2f} img/s "
        f"({delta:+.1f}%); supervisor CPU {cpu_share * 100:.2f}% of one core"
    )
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "mean_img_per_s": mean,
                    "delta_percent": delta,
                    "supervisor_cpu_share": cpu_share,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
