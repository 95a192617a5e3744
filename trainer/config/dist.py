"""The ``distributed`` config section: how many processes train one night, and where.

    distributed:
      nproc_per_node: 1        # 1 | N | auto (auto: every visible CUDA GPU; 1 elsewhere)
      nnodes: 1
      node_rank: 0             # this machine's index when nnodes > 1
      rdzv_endpoint: null      # host:port of the c10d rendezvous (needed when nnodes > 1)
      backend: auto            # auto: nccl on CUDA, gloo elsewhere
      timeout_minutes: 60      # collectives (evaluation on rank 0 makes the others wait)

With one process on one node nothing changes: no launcher, no process group. Otherwise the
supervisor starts ``python -m trainer.launch`` (PyTorch's elastic launcher, torchrun's own
arguments; see ``trainer/launch.py``): a standalone rendezvous on one node, c10d across nodes.

The recipe stays the recipe: ``data.batch_size × training.accumulation_steps`` is the GLOBAL
batch of a step at any world size (processes per node × nodes); each rank takes its share
(``trainer.runtime.dist.per_rank_batch``: the micro-batch divided, else the accumulation), so the LR
schedule and the learning curve are those of one process, only faster. The batch fallbacks
halve ``data.batch_size`` and so every rank's micro-batch. For a larger global batch on more
GPUs, raise ``data.batch_size`` (and the LR) yourself.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from trainer.config.base import Strict

_ENDPOINT = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}$")


class DistributedConfig(Strict):
    nproc_per_node: int | Literal["auto"] = Field(
        1, description="Processes on this node: a number, or auto (one per visible CUDA GPU)."
    )
    nnodes: int = Field(1, ge=1, description="Machines taking part.")
    node_rank: int = Field(0, ge=0, description="This machine's index (0 .. nnodes-1).")
    rdzv_endpoint: str | None = Field(
        None, description="host:port of the c10d rendezvous; needed when nnodes > 1."
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Collective backend: auto is nccl on CUDA, gloo elsewhere."
    )
    timeout_minutes: float = Field(
        60.0, gt=0, description="How long a collective may wait (rank 0 evaluates alone)."
    )

    @field_validator("nproc_per_node")
    @classmethod
    def _nproc(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1, or auto")
        return v

    @model_validator(mode="after")
    def _nodes(self) -> DistributedConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} is not below nnodes {self.nnodes}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                "nnodes > 1 needs rdzv_endpoint (host:port of node 0, e.g. 10.0.0.1:29400)"
            )
        if self.rdzv_endpoint is not None and not _ENDPOINT.match(self.rdzv_endpoint):
            raise ValueError(f"rdzv_endpoint {self.rdzv_endpoint!r} is not host:port")
        return self

    def nproc(self, cuda_devices: int) -> int:
        """Processes on this node (``auto``: one per CUDA device, else 1)."""
        if self.nproc_per_node == "auto":
            return max(1, cuda_devices)
        return int(self.nproc_per_node)

    def launched(self, cuda_devices: int) -> bool:
        """Whether this config runs under the launcher (more than one process in all)."""
        return self.nnodes > 1 or self.nproc(cuda_devices) > 1
