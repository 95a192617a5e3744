"""``hjepa-night join``: this machine's ranks in a night supervised on node 0.

    hjepa-night join --config F --node-rank 1 [--set distributed.nnodes=2 ...] [--state-dir var]

A night across nodes is run by ``hjepa-night run`` (or ``start``) on node 0, whose supervisor
launches node 0's ranks and restarts them after a failure. Every other node runs ``join`` with
the same config and overrides: it starts the same launcher (``trainer.launch``, c10d rendezvous
at ``distributed.rdzv_endpoint``, the rendezvous named by the config) with its node rank, and
when that attempt ends — completed, or brought down by a failure anywhere — starts it again to
meet node 0's next attempt, until training completes (exit 0) or Ctrl-C. This node needs no
checkpoint and no state: node 0's writer broadcasts its config (with the night's fallbacks) and
its resume state to every rank. Each attempt's log is under
``STATE_DIR/runs/join-<experiment>/node-<R>/attempt-NN/worker.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.core.launcher import rdzv_id, worker_command
from orchestrator.night.attempts import worker_env
from trainer.config import ConfigError, load_config
from trainer.events import EXIT_OK, EXIT_USAGE, WORKER_LOG_FILE


def cmd_join(args: argparse.Namespace) -> int:
    sets = [*args.overrides, f"distributed.node_rank={args.node_rank}"]
    try:
        cfg = load_config(args.config, sets)
    except ConfigError as exc:
        print(f"hjepa-night join: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if cfg.distributed.nnodes < 2 or args.node_rank < 1:
        print(
            "hjepa-night join: for nodes 1.. of a night across nodes "
            "(distributed.nnodes >= 2, --node-rank >= 1); node 0 runs `hjepa-night run`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    name = cfg.experiment.name
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        print(
            f"hjepa-night join: experiment.name {name!r} must be a plain name (no '/', '\\' or "
            f"'..'): it names this node's folder under {args.state_dir}/runs",
            file=sys.stderr,
        )
        return EXIT_USAGE
    head = worker_command(cfg.distributed, rdzv_id(cfg))
    base = Path(args.state_dir) / "runs" / f"join-{name}" / f"node-{args.node_rank}"
    stopping: list[int] = []
    child: list[subprocess.Popen[bytes]] = []

    def on_term(signum: int, _frame: object) -> None:  # the launcher ends with this node
        stopping.append(signum)
        for proc in child:
            with contextlib.suppress(OSError):
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, on_term)
    attempt = 0
    while not stopping:
        attempt += 1
        run_dir = base / f"attempt-{attempt:02d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        argv = [*head, "--config", str(Path(args.config).resolve()), "--run-dir", str(run_dir)]
        for item in sets:
            argv += ["--set", item]
        print(f"[{time.strftime('%H:%M:%S')}] node {args.node_rank}: attempt {attempt}", flush=True)
        try:
            with (run_dir / WORKER_LOG_FILE).open("ab") as log:
                proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **worker_env()}
                )
                child[:] = [proc]
                code = proc.wait()
        except KeyboardInterrupt:
            if child:
                child[0].wait()
            return 130
        if stopping:
            print(f"[{time.strftime('%H:%M:%S')}] node {args.node_rank}: stopped", flush=True)
            return 128 + stopping[0]
        print(f"[{time.strftime('%H:%M:%S')}] node {args.node_rank}: exit {code}", flush=True)
        if code in (EXIT_OK, EXIT_USAGE) or args.once:
            return code
        time.sleep(args.retry_s)
    return 128 + stopping[0]
