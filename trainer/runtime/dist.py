"""The worker's view of a multi-process run: rank, world size, the process group.

    dist = Dist.from_env()            # RANK / WORLD_SIZE / LOCAL_RANK set by the launcher
    dist.init(device, cfg.distributed)  # a process group only when world > 1
    dist.sum_(tensor)                 # in-place all-reduce (no-op alone)
    dist.barrier(); dist.close()

A worker started without the launcher (no ``WORLD_SIZE`` in its environment) is rank 0 of 1:
every method is then a no-op, so the single-process path has no process group and pays nothing.

The recipe stays the recipe: ``data.batch_size`` × ``training.accumulation_steps`` is the
GLOBAL batch of a step, shared by the ranks (:func:`per_rank_batch`), so the LR schedule, the
steps per epoch and the learning curve are those of one process, only faster; to train a larger
global batch on more GPUs, raise ``data.batch_size`` (and the LR) in the config.

Who does what with several ranks:
- the *writer* (the lowest rank on node 0 — rank 0 on one node; across nodes c10d numbers the
  ranks by host name, so it is elected: ``HJEPA_NODE_RANK`` set by ``trainer.launch``) alone
  writes events (the others write only their ``fatal``), checkpoints and the evaluation; the
  others wait for it at a barrier (``distributed.timeout_minutes``). Its config (with the
  night's overrides) and its resume state are broadcast, so every rank trains the same
  recipe from the same checkpoint and a joined node needs neither;
- every rank takes the same optimizer steps: gradients are averaged by DDP, the step statistics
  and the control decisions (stop, epoch cuts, signals) travel in one all-reduce per step
  (:mod:`trainer.train.step`), so every rank stops or re-plans at the same step;

:func:`gather_with_grad` is the all-gather whose backward sums the gradients back to their rank
(``torch.distributed.nn``): with DDP's averaging, a loss computed identically on every rank over
the gathered global batch gets exactly its true gradient.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as td


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False  # a process group is initialised
    writer: int = 0  # the rank that writes events and checkpoints (elected in init)

    @classmethod
    def from_env(cls) -> Dist:
        env = os.environ
        if "WORLD_SIZE" not in env:
            return cls()
        return cls(
            rank=int(env.get("RANK", "0")),
            world=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
        )

    @property
    def main(self) -> bool:
        return self.rank == self.writer

    def device_preference(self, pref: str) -> str:
        """One CUDA device per local rank (``cuda`` / ``auto`` → ``cuda:LOCAL_RANK``)."""
        if self.world > 1 and pref in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return pref

    def init(self, device: torch.device, backend: str, timeout_minutes: float) -> None:
        if self.world <= 1 or self.active:
            return
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        td.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=device if device.type == "cuda" else None,
        )
        self.active = True
        on_node0 = os.environ.get("HJEPA_NODE_RANK", "0") == "0"
        key = torch.tensor([self.rank if on_node0 else self.world + self.rank], device=device)
        td.all_reduce(key, op=td.ReduceOp.MIN)
        self.writer = int(key.item()) % self.world

    # -- collectives (no-ops alone) --------------------------------------------------------
    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            td.all_reduce(t, op=td.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.active:
            td.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for start-up state, not the hot path)."""
        if not self.active:
            return obj
        box = [obj if self.main else None]
        td.broadcast_object_list(box, src=self.writer)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order, on every rank (``[obj]`` alone; pickled: for
        small values at agreed points, not the hot path)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Wait for every rank (rank 0 may still be evaluating or writing), then leave."""
        if self.active:
            td.barrier()
            td.destroy_process_group()
            self.active = False

    def abandon(self) -> None:
        """Leave without waiting (a failed rank: its peers may be gone)."""
        if self.active:
            self.active = False
            with contextlib.suppress(Exception):
                td.destroy_process_group()


def per_rank_batch(batch_size: int, accum: int, world: int) -> tuple[int, int]:
    """The recipe's ``data.batch_size`` × ``training.accumulation_steps`` shared by ``world``
    ranks: (micro-batch, accumulation) of ONE rank, the global batch unchanged. The micro-batch
    is divided when it can be (so an OOM fallback that halves data.batch_size halves every
    rank's memory), else the accumulation; else a ConfigError names the keys."""
    if world <= 1 or batch_size % world == 0:
        return batch_size // max(world, 1), accum
    if accum % world == 0:
        return batch_size, accum // world
    from trainer.config import ConfigError

    raise ConfigError(
        f"data.batch_size {batch_size} × training.accumulation_steps {accum} cannot be shared "
        f"by {world} ranks: make data.batch_size (or the accumulation) a multiple of {world}"
    )


def wrap_ddp(model: torch.nn.Module, dist: Dist) -> Any:
    """The model under DistributedDataParallel with several ranks (else None). The EMA target
    is a frozen part of the same module: DDP broadcasts it once at construction and never
    reduces it; every rank then updates it from identical weights."""
    if dist.world <= 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    # Fixed buffers (positional embeddings) are never trained: no per-forward buffer sync (the
    # keyword was renamed in recent torch, where the old one warns).
    params = inspect.signature(DistributedDataParallel).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, **{key: False})


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` [N, D] of every rank concatenated in rank order [world·N, D], gradients flowing
    back to each rank's own rows; ``x`` itself when no process group is running."""
    if not (td.is_available() and td.is_initialized()) or td.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; same autograd
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x), dim=0)
