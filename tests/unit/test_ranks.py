"""The pure parts of running on several ranks: how positions are dealt, which failure is the
group's, the launcher's command line, the ``distributed`` schema, and the report's batch."""

from __future__ import annotations

import signal

import pytest
from workerutil import DEMO

from orchestrator.core.fold import RunFold
from orchestrator.core.launcher import launched, launcher_options, worker_command
from orchestrator.views.fmt import batch_text
from trainer.config import ConfigError, DistributedConfig, load_config
from trainer.data.sampling import EpochSampler
from trainer.launch import root_failure
from trainer.model.positional import PositionalSampler, item_seed


def _positions(rank: int, world: int, micro: int, start: int, count: int) -> list[int]:
    order = EpochSampler([100], [1.0], 100, seed=3, epoch=2, start=start)
    seeds = {item_seed(3, 2, start + i): start + i for i in range(count)}
    sampler = PositionalSampler(order, 3, 2, start, count, rank, world, micro)
    return [seeds[s] for _, s in sampler]


@pytest.mark.parametrize("world,micro,accum", [(2, 4, 1), (2, 3, 2), (4, 2, 3), (3, 5, 1)])
def test_ranks_share_every_position_once_and_a_step_is_contiguous(world, micro, accum) -> None:
    glob = micro * accum * world
    count = (96 // glob) * glob
    per_rank = [_positions(r, world, micro, 4, count) for r in range(world)]
    assert sorted(p for rank in per_rank for p in rank) == list(range(4, 4 + count))
    for r in range(world):
        assert len(PositionalSampler([], 3, 2, 4, count, r, world, micro)) == count // world
    # step k = micro-batches k*accum .. of every rank = positions [4 + k*glob, 4 + (k+1)*glob)
    for k in range(count // glob):
        step = []
        for rank in per_rank:
            step += rank[k * accum * micro : (k + 1) * accum * micro]
        assert sorted(step) == list(range(4 + k * glob, 4 + (k + 1) * glob))


def test_a_position_keeps_its_seed_whatever_the_world_size() -> None:
    one = dict(_pairs(0, 1, 4, 8, 48))
    two = dict(_pairs(0, 2, 4, 8, 48) + _pairs(1, 2, 4, 8, 48))
    assert one == two


def _pairs(rank: int, world: int, micro: int, start: int, count: int) -> list[tuple[int, int]]:
    order = EpochSampler([100], [1.0], 100, seed=3, epoch=2, start=start)
    return list(PositionalSampler(order, 3, 2, start, count, rank, world, micro))


def test_the_root_failure_is_the_cause_not_the_peers_that_lost_it() -> None:
    # rank 1 ran out of memory; rank 0 then crashed on the closed connection (14) a bit later
    assert root_failure({0: (14, 10.0), 1: (10, 10.0)}) == (1, 10)
    assert root_failure({0: (14, 9.0), 1: (10, 10.0)}) == (1, 10)
    # a rank killed by SIGKILL: 128 + 9, as a shell says it
    assert root_failure({1: (-signal.SIGKILL, 5.0), 0: (14, 5.5)}) == (1, 137)
    # torn down by the launcher's SIGTERM is a consequence too
    assert root_failure({0: (-signal.SIGTERM, 1.0), 1: (11, 2.0)}) == (1, 11)
    # every rank stopped on request
    assert root_failure({0: (3, 2.0), 1: (3, 2.0)}) == (0, 3)
    # only consequences: the earliest
    assert root_failure({1: (14, 2.0), 0: (14, 1.0)}) == (0, 14)
    with pytest.raises(ValueError):
        root_failure({})


def test_one_process_is_the_plain_worker() -> None:
    d = DistributedConfig()
    assert not launched(d)
    assert worker_command(d, "x", python="py") == ["py", "-m", "trainer"]


def test_one_node_is_a_standalone_rendezvous() -> None:
    cmd = worker_command(DistributedConfig(nproc_per_node=2), "x", python="py")
    assert cmd == [
        "py",
        "-m",
        "trainer.launch",
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "trainer",
    ]
    assert launched(DistributedConfig(nproc_per_node="auto"))


def test_several_nodes_meet_at_a_c10d_rendezvous() -> None:
    d = DistributedConfig(nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29400")
    assert launcher_options(d, "hjepa-demo") == [
        "--nproc-per-node",
        "1",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "10.0.0.1:29400",
        "--rdzv-id",
        "hjepa-demo",
    ]


@pytest.mark.parametrize(
    "sets,words",
    [
        (["distributed.nnodes=2"], "needs rdzv_endpoint"),
        (["distributed.node_rank=1"], "node_rank 1 is not below nnodes 1"),
        (["distributed.nproc_per_node=0"], "at least 1"),
        (["distributed.nproc_per_node=many"], "nproc_per_node"),
        (["distributed.nnodes=2", "distributed.rdzv_endpoint=nohost"], "not host:port"),
        (["distributed.backend=mpi"], "backend"),
        (["distributed.world=2"], "unknown key"),
        (["faults.sigkill_rank=1"], "go together"),
        (["faults.oom_rank=1"], "needs faults.oom_at_step"),
        (["faults.hang_rank=1"], "needs faults.hang_at_step"),
    ],
)
def test_bad_distributed_settings_name_the_key(sets, words) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, sets)
    assert words in str(err.value)


def test_auto_is_one_process_per_gpu_and_one_without() -> None:
    d = DistributedConfig(nproc_per_node="auto")
    assert d.nproc(0) == 1 and d.nproc(4) == 4 and d.launched(4) and not d.launched(0)
    assert DistributedConfig(nproc_per_node=3).nproc(8) == 3


def test_the_report_states_ranks_and_the_global_batch() -> None:
    assert batch_text({"micro_batch": 64, "accum_steps": 1}) == "64×1"
    started = {"micro_batch": 32, "accum_steps": 2, "world_size": 2, "global_batch": 128}
    assert batch_text(started) == "32×2×2 = 128"


def test_the_first_fatal_of_an_attempt_is_its_cause() -> None:
    fold = RunFold()
    events = [
        {"type": "started", "ts": 1.0, "world_size": 2},
        {"type": "fatal", "ts": 2.0, "kind": "oom", "message": "out of memory", "rank": 1},
        {"type": "fatal", "ts": 2.5, "kind": "crash", "message": "Connection closed", "rank": 0},
    ]
    fold.feed(1, events, 3.0)
    view = fold.view()
    assert view.fatal is not None and view.fatal["kind"] == "oom" and view.fatal["rank"] == 1
    assert [f["kind"] for f in view.fatals] == ["oom", "crash"]


class _FakeNVML:
    """Two GPUs: ranks 11 and 12 on them, another process (99) on GPU 1."""

    class _Proc:
        def __init__(self, pid: int, used: int) -> None:
            self.pid, self.usedGpuMemory = pid, used

    class _Info:
        def __init__(self, used: int, total: int = 80 << 30) -> None:
            self.used, self.total = used, total

    def __init__(self) -> None:
        p = self._Proc
        self.procs = {0: [p(11, 3 << 30)], 1: [p(12, 5 << 30), p(99, 1 << 30)]}
        self.totals = {0: 4 << 30, 1: 7 << 30}

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 - NVML's names
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list:  # noqa: N802
        return self.procs[h]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> _Info:  # noqa: N802
        return self._Info(self.totals[h])


def test_gpu_memory_is_the_fullest_gpu_the_ranks_use() -> None:
    from orchestrator.core.system import System

    system = System()
    system._nvml_tried, system._nvml = True, _FakeNVML()
    # (bytes, that card's total, whole-card usage?)
    assert system._gpu_used([1, 11, 12]) == (5 << 30, 80 << 30, False)  # rank 12's GPU, not 3 + 5
    assert system._gpu_used([1, 11]) == (3 << 30, 80 << 30, False)
    assert system._gpu_used([1]) == (7 << 30, 80 << 30, True)  # none listed: the fullest card


def test_a_killed_rank_is_named_in_the_attempts_message() -> None:
    from orchestrator.policy import classify_exit

    tail = "Traceback ...\ntrainer.launch: rank 1 failed first (signal 9); then rank 0: 14\n"
    kind, message = classify_exit(137, None, tail)
    assert kind == "killed" and "rank 1 failed first (signal 9)" in message
    assert "not near a ceiling" in classify_exit(137, None, "")[1]  # no memory evidence given
