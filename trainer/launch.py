"""The launcher for several ranks: PyTorch's elastic launcher (torchrun) with the worker's
exit-code contract and one process group.

    python -m trainer.launch --standalone --nproc-per-node 2 -m trainer --config F --run-dir D
    python -m trainer.launch --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint 10.0.0.1:29400 --rdzv-id night-1 --node-rank 0 -m trainer --config F ...

The options are torchrun's own (parsed by ``torch.distributed.run``'s parser, turned into its
``LaunchConfig`` by its ``config_from_args`` and run by its ``elastic_launch``: the same
rendezvous, agent and worker monitoring); the command after them must be ``-m trainer``. Three
things differ from ``python -m torch.distributed.run``, each because the supervisor depends on it:

- **One process group.** torchrun starts a ``-m`` command's ranks each in a new session, out of
  the reach of a signal to the launcher's group, and a launcher killed with SIGKILL leaves them
  running. Here every rank runs the worker's ``main`` as a function (torchrun's ``--run-path``
  path: multiprocessing ``spawn``), so ranks and their data-loader workers stay in the group the
  supervisor signals and kills, and a rank whose launcher dies gets SIGINT (it stops).
- **The worker's exit code.** torchrun exits 1 whatever failed. Here the launcher exits with the
  root cause's code (:func:`root_failure`): 0 when every rank completed, 3 when they stopped on
  request, 10 when one ran out of memory (an OOM on any rank is the group's OOM), 128+N when a
  rank died of signal N — not the "lost a peer" crash of the ranks that outlived it.
- **Signals.** SIGTERM and SIGINT reach the ranks themselves (they checkpoint at the next step
  and exit 3, in agreement: ``trainer/runtime/dist.py``); the launcher forwards one it receives
  alone to its ranks and waits for them, instead of tearing them down after 30 s. One that arrives
  before any rank exists (the rendezvous is still waiting for its nodes) ends the launcher.

``--nproc-per-node auto`` means one rank per CUDA GPU, else one (torchrun's: one per CPU core
on a machine without GPUs). The agent's per-rank files (error reports) go to
``RUN_DIR/launcher/`` unless ``--log-dir`` says otherwise (torchrun: a new temporary directory
per launch). ``OMP_NUM_THREADS`` defaults to the CPUs divided by the ranks of this node
(torchrun: 1). ``HJEPA_NODE_RANK`` tells the ranks which node they are on: the lowest rank of
node 0 writes events and checkpoints (c10d numbers ranks by host name, not by ``--node-rank``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Mapping
from typing import Any

NODE_RANK_ENV = "HJEPA_NODE_RANK"
# Exits that follow from another rank's failure rather than cause one: a crash of a rank whose
# peer vanished (gloo/NCCL "connection closed"), or the launcher's SIGTERM/SIGINT/SIGKILL on the
# way down. A root cause is looked for among the others first.
_CONSEQUENCES = (14, -signal.SIGTERM, -signal.SIGINT)


def root_failure(failures: Mapping[int, tuple[int, float]]) -> tuple[int, int]:
    """``{rank: (exit code, time)}`` of the failed ranks → (rank, launcher exit code).

    The earliest failure that is not a consequence of another (see ``_CONSEQUENCES``), else the
    earliest; a death by signal N becomes 128 + N, as a shell reports it."""
    if not failures:
        raise ValueError("no failures")
    order = sorted(failures, key=lambda r: (failures[r][1], r))
    causes = [r for r in order if failures[r][0] not in _CONSEQUENCES]
    rank = (causes or order)[0]
    code = failures[rank][0]
    return rank, (128 - code if code < 0 else code)


def rank_main(worker_args: list[str]) -> None:
    """One rank: the worker's own ``main``; its exit code becomes the process's."""
    from trainer.__main__ import main

    code = main(worker_args)
    if code:
        sys.exit(code)


def _forward(signum: int, _frame: Any) -> None:
    """A SIGTERM/SIGINT sent to the launcher alone: pass it to the ranks, keep waiting. Before
    any rank exists (still in the rendezvous) there is nobody to stop gracefully: the launcher
    ends, by the signal's default action, instead of waiting on a rendezvous nobody will meet."""
    import psutil

    ranks = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" not in " ".join(child.cmdline()):
                ranks.append(child)
    if not ranks:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    for child in ranks:
        with contextlib.suppress(psutil.Error):
            child.send_signal(signum)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    args = torchrun.parse_args(argv)
    if not args.module or args.training_script != "trainer" or args.run_path or args.no_python:
        print("trainer.launch: the command must be -m trainer [worker options]", file=sys.stderr)
        return 2
    if args.standalone:  # as torchrun's run(): a c10d store on a free local port
        args.rdzv_backend, args.rdzv_endpoint = "c10d", "localhost:0"
        args.rdzv_id = str(uuid.uuid4())
    if args.master_port is None:
        args.master_port = 29500
    if args.nproc_per_node == "auto":  # the config's auto: one per CUDA GPU, else one
        import torch

        args.nproc_per_node = str(max(1, torch.cuda.device_count()))
    nproc = torchrun.determine_local_world_size(args.nproc_per_node)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ[NODE_RANK_ENV] = str(args.node_rank)
    worker_args = list(args.training_script_args)
    if args.log_dir is None and "--run-dir" in worker_args:  # not a new /tmp dir per launch
        run_dir = worker_args[worker_args.index("--run-dir") + 1]
        args.log_dir = os.path.join(run_dir, "launcher")
        os.makedirs(args.log_dir, exist_ok=True)
    config, _cmd, _cmd_args = torchrun.config_from_args(args)
    config.signals_to_handle = "SIGHUP,SIGQUIT"  # SIGTERM/SIGINT: the ranks stop themselves
    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    try:
        elastic_launch(config, rank_main)(worker_args)
    except ChildFailedError as exc:
        failures = {r: (f.exitcode, f.timestamp) for r, f in exc.failures.items()}
        rank, code = root_failure(failures)
        how = f"signal {failures[rank][0] * -1}" if failures[rank][0] < 0 else f"exit {code}"
        others = ", ".join(f"rank {r}: {c}" for r, (c, _) in sorted(failures.items()) if r != rank)
        print(
            f"trainer.launch: rank {rank} failed first ({how})"
            + (f"; then {others}" if others else ""),
            file=sys.stderr,
            flush=True,
        )
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
