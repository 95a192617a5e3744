"""The demo plan end to end: both nights run, night 2 is the aggressive one (night 1
succeeded) and its injected faults are repaired by the watchdog; night 1 learns against its
random encoder (kNN@20 +10 points, probe +5, not collapsed); the report is written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orchestrator.preflight.fit import read_fits
from trainer.events_read import read_events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_plan_completes_with_night_one_succeeded(demo_run) -> None:
    final = demo_run.final
    n1, n2 = final["nights"]
    print(f"demo plan wall time (with kill -9, stop and restarts): {demo_run.wall_s:.0f}s")
    assert n1["name"] == "n1-conservative" and n1["status"] == "succeeded", n1["reason"]
    assert n1["success"]["level"] in ("should", "stretch"), n1["success"]  # kNN and probe gain
    assert n1["final_metrics"]["knn"] and n1["best_checkpoint"]
    assert final["daemon"] is None and final["daemon_alive"] is False
    assert final["current_night"] is None and final["next_start"] is None
    decision = n2["decisions"][0]
    assert decision["kind"] == "plan" and "n1-conservative succeeded" in decision["trigger"]


def test_night_one_learns_against_its_random_encoder(demo_run) -> None:
    """The conservative demo recipe as shipped, across the kill -9, stop and resume: from the
    random encoder (the epoch-0 evaluation) to the last epoch, kNN@20 gains at least 10 points
    and the linear probe 5, and the features have not collapsed."""
    n1 = demo_run.final["nights"][0]
    runs = [read_events(Path(a["run_dir"]) / "events.jsonl") for a in n1["attempts"]]
    evals = [e for events in runs for e in events if e["type"] == "eval"]
    first, last = evals[0], evals[-1]
    total = next(e for e in runs[-1] if e["type"] == "started")["epochs"]
    assert first["epoch"] == 0 and last["epoch"] == total == n1["epochs_done"], (first, last)
    assert last["knn"]["20"] - first["knn"]["20"] >= 0.10, (first["knn"], last["knn"])
    probe = (first["linear_probe"], last["linear_probe"])
    assert probe[1] - probe[0] >= 0.05, probe
    assert last["feature_std"] > 0.01  # not collapsed


def test_night_two_runs_aggressive_and_repairs_the_injected_faults(demo_run) -> None:
    n2 = demo_run.final["nights"][1]
    assert n2["name"] == "n2-aggressive"
    assert n2["status"] == "succeeded", n2["reason"]
    assert n2["success"]["level"] in ("should", "stretch"), n2["success"]
    triggers = [f["trigger"] for f in n2["fallbacks"]]
    assert "oom" in triggers and "nonfinite" in triggers, triggers
    kinds = [a["exit_kind"] for a in n2["attempts"]]
    assert "oom" in kinds and "nonfinite" in kinds and kinds[-1] == "finished"  # as succeeded
    over = n2["overrides"]
    assert over["data.batch_size"] <= 16  # below the injected OOM threshold
    assert over["data.batch_size"] * over["training.accumulation_steps"] == 64  # same effective
    assert n2["final_metrics"]["linear_probe"] is not None


def test_morning_report_is_written(demo_run) -> None:
    reports = sorted(Path(demo_run.state_dir, "reports").glob("morning-*.md"))
    assert reports, "no morning report"
    text = reports[-1].read_text()
    assert "n1-conservative" in text and "n2-aggressive" in text
    # each night probed its features once at its start (no preflight ran), despite the kill -9,
    # the stop and the restarts of night 1: the report shows both tables and the difference
    rows = read_fits(demo_run.state_dir)
    assert [(r["source"], r["night"]) for r in rows] == [
        ("night start", "n1-conservative"), ("night start", "n2-aggressive")]  # fmt: skip
    assert [c["feature"] for c in rows[1]["features"]] == [
        "flash_attention", "gradient_checkpointing", "fpn", "contrastive"]  # fmt: skip
    assert all(r["speedup_vs_no_flash"] > 0 for r in rows), rows
    print("feature probes:", json.dumps(rows))
    night1, night2 = text.split("## Night 2")
    assert "### What each feature cost" in night1 and "| flash attention (SDPA) |" in night1
    assert "| FPN |" in night2 and "| contrastive term |" in night2
    assert "## Features across the nights" in text and "not what any one feature bought" in text
    log = Path(demo_run.state_dir, "daemon.log").read_text()
    assert "plan finished" in log and "report written" in log
    # the pictures of each night's best checkpoint, beside the report (FPN maps: night 2 only)
    for night, kinds in ((1, ["attention"]), (2, ["attention", "fpn"])):
        n = demo_run.final["nights"][night - 1]
        pics = [d for d in n["decisions"] if d["kind"] == "pictures"]
        assert pics and pics[-1]["evidence"]["problem"] == "", pics
        section = text.split(f"## Night {night}")[1].split("## Night")[0]
        names = re.findall(r"!\[[^\]]*\]\(([^)]+-(?:attention|fpn)\.png)\)", section)
        assert [x.rsplit("-", 1)[1] for x in names] == [f"{k}.png" for k in kinds], section
        for name in names:
            assert name.startswith(f"{reports[-1].stem}-n{night}-"), name  # relative, beside it
            assert (reports[-1].parent / name).read_bytes()[:4] == b"\x89PNG"


def test_live_status_screen_in_a_real_terminal(demo_run) -> None:
    screen = demo_run.steps.get("tmux_screen")
    if screen is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    assert "n1-conservative" in screen and "running" in screen, screen
    assert "epoch" in screen and "img/s" in screen and "kNN" in screen, screen
