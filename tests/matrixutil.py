"""The recipe × mode × event matrix (``tests/integration/test_matrix.py``): the shipped recipes
shrunk to this CPU, one run of the real worker under an event, and the invariants each run is
held to.

A *run* is one launch of the worker — ``python -m trainer`` (1 process) or
``python -m trainer.launch --standalone --nproc-per-node 2 -m trainer`` (2 gloo ranks) — in its
own process group, with a wall-clock limit: a run still alive at the limit is killed with its
whole group and fails the test as a hang (never a CI timeout).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.workerutil import ROOT, env, events
from trainer.checkpoint import store as ck
from trainer.events import Control, write_control

CONFIGS = ROOT / "configs"

# Every recipe keeps its feature switches as shipped (FPN, contrastive and where it is taken,
# gradient checkpointing, flash/SDPA, LayerScale, VICReg, DeiT-III augmentation, accumulation,
# the time checkpoints of the overnight recipes); only sizes shrink: a 32-wide ViT of depth 4
# on 32 px synthetic images, 8 optimizer steps an epoch, a small evaluation.
SHRINK = [
    "model.encoder_type=custom",
    "model.embed_dim=32",
    "model.depth=4",
    "model.num_heads=2",
    "model.patch_size=4",
    "model.predictor.depth=1",
    "model.predictor.embed_dim=32",
    "model.predictor.num_heads=2",
    "data.image_size=32",
    "data.num_workers=0",
    "data.synthetic.num_eval_train=64",
    "data.synthetic.num_eval_test=64",
    "evaluation.eval_at_start=false",
    "evaluation.max_train_samples=64",
    "evaluation.max_test_samples=64",
    "evaluation.rank_samples=64",
    "evaluation.batch_size=64",
    "evaluation.linear_probe.max_iter=20",
    "logging.log_frequency=1",
    "logging.heartbeat_s=0.5",
    "faults.check_gradients=true",  # every trainable parameter has a gradient at every step
    "faults.step_delay_s=0.1",  # time for the test to act between steps
]


@dataclass(frozen=True)
class Recipe:
    name: str
    config: Path
    sets: tuple[str, ...]
    feature: str  # the feature a `feat` event breaks
    feature_off: str  # the override that switches it off (the feature rung)
    global_batch: int


RECIPES = {
    "DC": Recipe(
        "DC",
        CONFIGS / "demo_conservative.yaml",
        ("data.batch_size=8", "data.synthetic.num_train=64"),
        "flash_attention",
        "model.use_flash_attention=false",
        8,
    ),
    "DA": Recipe(
        "DA",
        CONFIGS / "demo_aggressive.yaml",
        ("data.batch_size=4", "data.synthetic.num_train=64", "model.fpn.feature_dim=32"),
        "contrastive",
        "loss.use_contrastive=false",
        8,
    ),
    "OC": Recipe(
        "OC",
        CONFIGS / "overnight_training_conservative.yaml",
        (
            "data.batch_size=8",
            "data.synthetic.num_train=64",
            # the weighted two-dataset mix, both parts synthetic
            "data.datasets=[{name: synthetic, weight: 0.5}, {name: synthetic, weight: 0.5}]",
        ),
        "vicreg",
        "loss.use_vicreg=false",
        8,
    ),
    "OA": Recipe(
        "OA",
        CONFIGS / "overnight_training_aggressive.yaml",
        (
            "data.dataset=synthetic",
            "data.batch_size=4",
            "data.synthetic.num_train=128",
            "model.fpn.feature_dim=32",
        ),
        "fpn",
        "model.use_fpn=false",
        16,
    ),
}

TWO_RANKS = ["--standalone", "--nproc-per-node", "2"]
RUN_LIMIT_S = 300.0  # a run alive this long is hung (killed with its group)
STOP_BOUND_S = 60.0  # a stop (control file or signal) ends the run within this


class HungError(AssertionError):
    """A run still alive at ``RUN_LIMIT_S`` (its group was killed)."""


@dataclass
class Run:
    """One launch: its command, process, and when the test acted on it."""

    run_dir: Path
    world: int
    sets: list[str]
    config: Path
    resume: str | None = None
    proc: subprocess.Popen | None = None
    t_start: float = 0.0
    t_end: float = 0.0
    t_acted: float | None = None
    code: int | None = None
    notes: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        if self.world == 1:
            cmd = [sys.executable, "-m", "trainer"]
        else:
            cmd = [sys.executable, "-m", "trainer.launch", *TWO_RANKS, "-m", "trainer"]
        cmd += ["--config", str(self.config), "--run-dir", str(self.run_dir)]
        for s in self.sets:
            cmd += ["--set", s]
        if self.resume:
            cmd += ["--resume", self.resume]
        return cmd

    def start(self) -> Run:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = (self.run_dir.parent / f"{self.run_dir.name}.log").open("ab")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env(),
            cwd=ROOT,
            start_new_session=True,  # its own group, as the supervisor starts it
        )
        return self

    def log(self) -> str:
        p = self.run_dir.parent / f"{self.run_dir.name}.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def alive(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is None

    def wait_until(self, predicate, what: str) -> None:
        """Poll ``predicate`` while the run lives; a hang past the limit kills the group."""
        while not predicate():
            if not self.alive():
                raise AssertionError(f"{self.run_dir.name} ended before {what}:\n{self.log()}")
            self.check_limit(what)
            time.sleep(0.05)

    def check_limit(self, what: str) -> None:
        if time.monotonic() - self.t_start > RUN_LIMIT_S:
            self.kill_group()
            raise HungError(
                f"{self.run_dir.name} hung waiting for {what}; group killed:\n{self.log()}"
            )

    def wait(self) -> int:
        """The exit code; a run past the limit is a hang: its group is killed."""
        assert self.proc is not None
        left = RUN_LIMIT_S - (time.monotonic() - self.t_start)
        try:
            self.code = self.proc.wait(max(left, 1.0))
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise HungError(
                f"{self.run_dir.name} hung (> {RUN_LIMIT_S:.0f} s); group killed:\n{self.log()}"
            ) from None
        self.t_end = time.monotonic()
        deadline = time.monotonic() + 20
        while group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left_over = group_alive(self.proc.pid)
        if left_over:
            self.kill_group()
            raise AssertionError(f"processes outlived {self.run_dir.name}: {left_over}")
        return self.code

    def kill_group(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    # -- events during the run ----------------------------------------------------------------
    def steps(self) -> list[int]:
        return [e["step"] for e in events(self.run_dir, "step")]

    def saved_by_time(self) -> bool:
        return any(e["reason"] == "time" for e in events(self.run_dir, "checkpoint"))

    def reached(self, step: int) -> bool:
        return any(s >= step for s in self.steps())

    def control(self, seq: int, *, epochs: int | None = None, stop: bool = False) -> None:
        write_control(self.run_dir, Control(seq=seq, epochs=epochs, stop=stop))
        self.t_acted = time.monotonic()

    def sigterm_one(self) -> None:
        """SIGTERM to one process: the worker alone, or the rank that does not write."""
        assert self.proc is not None
        if self.world == 1:
            target = self.proc.pid
        else:
            writer = events(self.run_dir, "started")[0]["pid"]
            ranks = [
                p.pid
                for p in psutil.Process(self.proc.pid).children()
                if "spawn_main" in " ".join(p.cmdline()) and p.pid != writer
            ]
            assert len(ranks) == 1, ranks
            target = ranks[0]
        os.kill(target, signal.SIGTERM)
        self.t_acted = time.monotonic()


def group_alive(pgid: int) -> list[int]:
    alive = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                alive.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive


# -- invariants ---------------------------------------------------------------------------------
def assert_ranks_agree(run: Run) -> list[dict]:
    """Every checkpoint lists one weights digest per rank, all equal (bitwise-identical model
    and EMA target on every rank)."""
    saved = events(run.run_dir, "checkpoint")
    for e in saved:
        assert len(e["digests"]) == run.world, e
        assert len(set(e["digests"])) == 1, f"ranks disagree at step {e['step']}: {e}"
    return saved


def newest_checkpoint(run: Run) -> tuple[Path, int]:
    """The run's newest checkpoint and its step (what the supervisor resumes from)."""
    found = ck.list_checkpoints(run.run_dir / "checkpoints")
    assert found, f"{run.run_dir.name} left no checkpoint"
    return found[0], int(ck.read_sidecar(found[0])["step"])


def assert_resume_continues(prev: Run, run: Run, ckpt_step: int, same_mode: bool) -> None:
    """The resumed run starts at the checkpoint's step, and every step both runs took has the
    same LR and EMA momentum (and, in the same mode and features, the same loss)."""
    (started,) = events(run.run_dir, "started")
    assert started["start_step"] == ckpt_step, started
    (resumed,) = events(run.run_dir, "resumed")
    assert resumed["step"] == ckpt_step
    steps = events(run.run_dir, "step")
    if steps:
        assert steps[0]["step"] == ckpt_step + 1, [e["step"] for e in steps]
    before = {e["step"]: e for e in events(prev.run_dir, "step")}
    if _cut_after(prev, ckpt_step):
        # the live cut landed after this checkpoint: the resume re-plans it at the checkpoint's
        # position (trainer/train/state.py resume_schedule), so the curves differ from there on
        (total,) = {e["total_epochs"] for e in events(run.run_dir, "epoch_end")} or {None}
        assert total in (None, started["epochs"]), (total, started)
        return
    for e in steps:
        old = before.get(e["step"])
        if old is None:
            continue
        assert e["lr"] == old["lr"], (e["step"], e["lr"], old["lr"])
        assert e["ema_momentum"] == old["ema_momentum"], e["step"]
        if same_mode:
            assert abs(e["loss"] - old["loss"]) <= 1e-4 * max(1.0, abs(old["loss"])), (
                e["step"],
                e["loss"],
                old["loss"],
            )


def _cut_after(prev: Run, ckpt_step: int) -> bool:
    """Whether ``prev`` applied a live epoch cut after its step ``ckpt_step`` (the step events
    before the ``control`` event say where it landed)."""
    last_step = 0
    for e in events(prev.run_dir):
        if e["type"] == "step":
            last_step = e["step"]
        elif e["type"] == "control" and e.get("epochs") is not None and last_step >= ckpt_step:
            return True
    return False
