"""The command that starts a worker: ``python -m trainer`` alone, or under the launcher.

    argv = worker_command(cfg.distributed, run_id="hjepa-demo")   # then --config ... --run-dir

With one process on one node (``distributed.nproc_per_node: 1``, ``nnodes: 1``) it is the plain
worker: no launcher, no process group. Otherwise it is ``python -m trainer.launch`` (PyTorch's
elastic launcher with torchrun's options; see ``trainer/launch.py``) around ``-m trainer``: a
standalone rendezvous on one node, c10d at ``rdzv_endpoint`` across nodes, where ``run_id``
(the same on every node) names the rendezvous. The launcher exits with the worker's exit codes,
and keeps every rank in the process group the supervisor signals.
"""

from __future__ import annotations

import sys

from trainer.config import Config, DistributedConfig


def rdzv_id(cfg: Config) -> str:
    """The rendezvous name every node derives alike from the same config."""
    return f"hjepa-{cfg.experiment.name}"


def launched(dist: DistributedConfig) -> bool:
    """Whether this config runs under the launcher (``auto`` counts: the launcher resolves it)."""
    return dist.nnodes > 1 or dist.nproc_per_node != 1


def launcher_options(dist: DistributedConfig, run_id: str) -> list[str]:
    """torchrun's options for this config (``auto``: one process per CUDA GPU, else 1)."""
    opts = ["--nproc-per-node", str(dist.nproc_per_node)]
    if dist.nnodes == 1:
        return [*opts, "--standalone"]
    assert dist.rdzv_endpoint is not None  # the schema requires it with nnodes > 1
    return [
        *opts,
        "--nnodes",
        str(dist.nnodes),
        "--node-rank",
        str(dist.node_rank),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        dist.rdzv_endpoint,
        "--rdzv-id",
        run_id,
    ]


def worker_command(dist: DistributedConfig, run_id: str, python: str = sys.executable) -> list[str]:
    """The argv before ``--config``: the plain worker, or the launcher around it."""
    if not launched(dist):
        return [python, "-m", "trainer"]
    return [python, "-m", "trainer.launch", *launcher_options(dist, run_id), "-m", "trainer"]
