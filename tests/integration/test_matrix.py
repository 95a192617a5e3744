"""The shipped recipes in the modes they run, under the events that matter, held to invariants.

Factors: recipe — DC ``demo_conservative``, DA ``demo_aggressive`` (FPN, contrastive on the
context encoder, gradient checkpointing, DeiT-III, accumulation 2), OC
``overnight_training_conservative`` (flash/SDPA, LayerScale, VICReg, a weighted two-dataset mix,
time checkpoints), OA ``overnight_training_aggressive`` (FPN, contrastive against the target
encoder, gradient checkpointing, DeiT-III with auto-augment, accumulation 4, time checkpoints),
each shrunk to this CPU with every feature switch as shipped (``tests/matrixutil.py``); launch —
1 process (``python -m trainer``) or 2 gloo ranks (``python -m trainer.launch --standalone
--nproc-per-node 2``); precision — fp32, bf16, fp16 + GradScaler (``training.precision``, all
three run on a CPU); event — a control stop, a live epoch cut, a time checkpoint, an OOM, a NaN,
a feature fault, SIGTERM to one rank (the non-writer; the worker alone), SIGKILL of one rank.

A cell is a night in miniature: three runs of one recipe and one launch mode, each resuming from
the night's newest checkpoint (as the supervisor does, with the feature rung's override
after a feature fault), each ending on its own event. Every run has time checkpoints
(``checkpoint.every_minutes`` 0.6 s); every cell's first run also gets a live epoch cut (3 → 2
epochs, written once the first time checkpoint is out) before its fault. Cells cover every pair
of (recipe, launch), (recipe, precision), (launch, precision), (recipe, event),
(launch, event), (precision, event) (``test_the_cells_cover_every_pair``):

=====  ======  ======  =========================  ===================  ==================
cell   recipe  launch  run 1 (+ cut, time ckpts)  run 2 (+ time)       run 3 (+ time)
=====  ======  ======  =========================  ===================  ==================
DC-A   DC      1p      bf16 OOM                   bf16 NaN             fp32 control stop
DC-B   DC      2r      fp32 feature (flash)       fp16 SIGKILL rank 1  fp16 SIGTERM rank 1
DA-A   DA      2r      bf16 OOM (rank 1)          fp16 NaN             bf16 control stop
DA-B   DA      1p      fp16 feature (contrast.)   bf16 SIGKILL         fp32 SIGTERM
OC-A   OC      1p      fp16 OOM                   fp32 NaN             fp16 control stop
OC-B   OC      2r      bf16 feature (vicreg)      fp16 SIGKILL rank 1  fp16 SIGTERM rank 1
OA-C   OA      2r      fp32 NaN                   fp16 feature (fpn)   bf16 control stop
OA-D   OA      1p      fp32 SIGKILL               fp32 OOM             bf16 SIGTERM
=====  ======  ======  =========================  ===================  ==================

Invariants, every run: every trainable parameter has a gradient at every optimizer step
(``faults.check_gradients``: a parameter without one crashes the run); every checkpoint lists
one weights digest per rank (model + EMA target) and they are equal; the run ends with the
event's exit code within ``RUN_LIMIT_S`` (else its process group is killed and the test fails
as a hang), and no process outlives it; a fault's ``fatal`` names its kind; a stop ends within
``STOP_BOUND_S`` with a ``stop`` checkpoint; a live cut sets every later epoch's total; a resume
starts at the checkpoint's step and every step both runs took has the same LR and EMA momentum
(and the same loss where precision and features did not change).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from tests.matrixutil import (
    RECIPES,
    SHRINK,
    STOP_BOUND_S,
    Run,
    assert_ranks_agree,
    assert_resume_continues,
    newest_checkpoint,
)
from tests.workerutil import events
from trainer.events import EXIT_FEATURE, EXIT_NONFINITE, EXIT_OOM, EXIT_STOPPED


@dataclass(frozen=True)
class Cell:
    name: str
    recipe: str
    world: int
    runs: tuple[tuple[str, str], ...]  # (precision, event) per run


CELLS = [
    Cell("DC-A", "DC", 1, (("bf16", "oom"), ("bf16", "nan"), ("fp32", "stop"))),
    Cell("DC-B", "DC", 2, (("fp32", "feature"), ("fp16", "sigkill"), ("fp16", "sigterm"))),
    Cell("DA-A", "DA", 2, (("bf16", "oom"), ("fp16", "nan"), ("bf16", "stop"))),
    Cell("DA-B", "DA", 1, (("fp16", "feature"), ("bf16", "sigkill"), ("fp32", "sigterm"))),
    Cell("OC-A", "OC", 1, (("fp16", "oom"), ("fp32", "nan"), ("fp16", "stop"))),
    Cell("OC-B", "OC", 2, (("bf16", "feature"), ("fp16", "sigkill"), ("fp16", "sigterm"))),
    Cell("OA-C", "OA", 2, (("fp32", "nan"), ("fp16", "feature"), ("bf16", "stop"))),
    Cell("OA-D", "OA", 1, (("fp32", "sigkill"), ("fp32", "oom"), ("bf16", "sigterm"))),
]
EVENTS = ["stop", "cut", "time", "oom", "nan", "feature", "sigterm", "sigkill"]
FIRST_FAULT_STEP = 9  # run 1: after the cut (written at the first time checkpoint)
EXIT = {
    "stop": EXIT_STOPPED,
    "sigterm": EXIT_STOPPED,
    "oom": EXIT_OOM,
    "nan": EXIT_NONFINITE,
    "feature": EXIT_FEATURE,
}
FATAL_KIND = {"oom": "oom", "nan": "nonfinite", "feature": "feature"}


def cell_rows() -> list[dict[str, str]]:
    """One row per run: its recipe, launch, precision and events (cut and time included)."""
    rows = []
    for cell in CELLS:
        for i, (precision, event) in enumerate(cell.runs):
            evs = [event, "time"] + (["cut"] if i == 0 else [])
            for ev in evs:
                launch = "2r" if cell.world == 2 else "1p"
                rows.append(
                    {"recipe": cell.recipe, "launch": launch, "precision": precision, "event": ev}
                )
    return rows


def test_the_cells_cover_every_pair() -> None:
    levels = {
        "recipe": list(RECIPES),
        "launch": ["1p", "2r"],
        "precision": ["fp32", "bf16", "fp16"],
        "event": EVENTS,
    }
    rows = cell_rows()
    for a, b in itertools.combinations(levels, 2):
        want = set(itertools.product(levels[a], levels[b]))
        got = {(r[a], r[b]) for r in rows}
        assert want <= got, f"({a}, {b}) pairs not covered: {sorted(want - got)}"


def fault_sets(event: str, at: int, world: int, feature: str) -> list[str]:
    if event == "oom":
        return [f"faults.oom_at_step={at}"] + (["faults.oom_rank=1"] if world > 1 else [])
    if event == "nan":
        return [f"faults.nonfinite_at_step={at}"]
    if event == "feature":
        return [f"faults.raise_in_feature={feature}", f"faults.raise_in_feature_after_step={at}"]
    if event == "sigkill":
        return [f"faults.sigkill_rank={world - 1}", f"faults.sigkill_at_step={at}"]
    return []


def play(cell: Cell, tmp_path: Path) -> list[float]:
    recipe = RECIPES[cell.recipe]
    base = [*SHRINK, *recipe.sets, "checkpoint.every_minutes=0.01"]
    carried: list[str] = []  # the night's overrides so far (the cut, a feature rung)
    epochs, prev, resume, at_step = 3, None, None, 0
    seconds = []
    for i, (precision, event) in enumerate(cell.runs):
        t0 = time.monotonic()
        fault_at = FIRST_FAULT_STEP if i == 0 else at_step + 3
        sets = [*base, f"training.precision={precision}", f"training.epochs={epochs}", *carried]
        sets += fault_sets(event, fault_at, cell.world, recipe.feature)
        run = Run(tmp_path / f"run{i + 1}-{event}", cell.world, sets, recipe.config, resume)
        run.start()
        if i == 0:  # a live cut, once the first time checkpoint is out
            run.wait_until(run.saved_by_time, "a time checkpoint")
            run.control(1, epochs=2)
            epochs = 2
            carried.append("training.epochs=2")  # the cut is state: resumes keep it
        if event in ("stop", "sigterm"):
            run.wait_until(partial(run.reached, at_step + 2), f"step {at_step + 2}")
            if event == "stop":
                run.control(2, stop=True)
            else:
                run.sigterm_one()
        code = run.wait()
        check_run(cell, i, run, event, code, epochs, recipe.feature)
        if prev is not None:
            same = precision == cell.runs[i - 1][0] and cell.runs[i - 1][1] != "feature"
            assert_resume_continues(prev, run, at_step, same_mode=same)
        if event == "feature":
            carried.append(recipe.feature_off)  # the feature rung
        if events(run.run_dir, "checkpoint"):  # else the night's newest is still the last one
            ckpt, at_step = newest_checkpoint(run)
            resume = str(ckpt)
        prev = run
        seconds.append(round(time.monotonic() - t0, 1))
    return seconds


def check_run(cell: Cell, i: int, run: Run, event: str, code: int, epochs: int, feature: str):
    log = run.log()
    if event == "sigkill":
        assert code == (137 if cell.world > 1 else -9), (code, log)
    else:
        assert code == EXIT[event], (event, code, log)
    saved = assert_ranks_agree(run)
    if i == 0:
        assert any(e["reason"] == "time" for e in saved)
        control = events(run.run_dir, "control")
        assert control and control[0]["applied"].startswith("epochs → 2"), control
        assert all(e["total_epochs"] == epochs for e in events(run.run_dir, "epoch_end"))
    fatal = events(run.run_dir, "fatal")
    if event in FATAL_KIND:
        assert fatal and fatal[0]["kind"] == FATAL_KIND[event], (fatal, log)
        if event == "feature":
            assert fatal[0]["feature"] == feature
    elif event != "sigkill":
        assert not fatal, fatal
    if event in ("stop", "sigterm"):
        assert saved[-1]["reason"] == "stop", saved[-1]
        assert events(run.run_dir, "finished")[-1]["reason"] == "stopped"
        assert run.t_acted is not None and run.t_end - run.t_acted <= STOP_BOUND_S


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
def test_matrix_cell(cell: Cell, tmp_path: Path) -> None:
    seconds = play(cell, tmp_path)
    print(f"cell {cell.name}: runs {seconds} s")
