"""Frames of the status screen rendered from recorded state dirs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.views.screen.live import render, run_status
from orchestrator.views.screen.panels import sparkline
from orchestrator.views.snapshot import SnapshotSource

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "states"


def frame(state_dir: Path, width: int = 110, styles: bool = False) -> str:
    now_file = state_dir / "NOW"
    now = float(now_file.read_text()) if now_file.exists() else None
    console = Console(record=True, width=width, force_terminal=styles, color_system="standard")
    console.print(render(SnapshotSource(state_dir).take(now=now)))
    return console.export_text(styles=styles)


def test_running_night_frame_answers_is_it_ok_and_will_it_finish() -> None:
    text = frame(FIXTURES / "night-running")
    for expected in (
        "plan sequential",
        "conservative  running",
        "aggressive    pending",
        "attempt    2 of 2 (from ckpt-e0001-s00000100.pt)",
        "data.batch_size=24",  # overrides in force
        "epoch 13/50 (12 done)",
        "LATE by 35m00s",  # forecast (final eval included once) vs deadline
        "pace needed",
        "img/s",
        "kNN 1/5/20",
        "linear probe N/A",  # the eval at epoch 10 had no probe
        "ceiling   host 28 GB",
        "device 92% of its total",
        "fallbacks, newest first (1)",
        "tree_rss_gb=26.9",
    ):
        assert expected in text, expected
    assert "level 2" in text and "▁" in text and "█" in text  # per-level sparklines


def test_memory_and_epoch_time_are_coloured_by_the_runbook_thresholds() -> None:
    text = frame(FIXTURES / "night-running", styles=True)
    assert "\x1b[33m20.8 GB" in text  # worker tree RSS: between good 20 and warning 25 GB
    assert "\x1b[32m10m00s" in text  # 10-minute epochs: under the 12-minute "good"
    assert "\x1b[1;31mLATE" in text


@pytest.mark.parametrize(
    ("expectations", "epoch", "peak"),
    [
        # 10-minute epochs inside 9-10; the 26.1 GB peak above 16 by more than a quarter
        ("[{measure: epoch_minutes, low: 9, high: 10}, {measure: memory_peak_gb, low: 12, "
         "high: 16}]", "\x1b[32m10m00s\x1b[0m (expected 9 – 10 min)",
         "\x1b[1;31m26.1 GB\x1b[0m (expected 12 – 16 GB)"),
        # 10 minutes over an 8.5-minute high by less than a quarter: yellow; peak inside
        ("[{measure: epoch_minutes, high: 8.5}, {measure: memory_peak_gb, high: 30}]",
         "\x1b[33m10m00s\x1b[0m (expected ≤ 8.5 min)", "\x1b[32m26.1 GB\x1b[0m (expected ≤ 30 GB)"),
        # faster than the recipe says: unusual, yellow, not red
        ("[{measure: epoch_minutes, low: 11, high: 12}]", "\x1b[33m10m00s\x1b[0m (expected 11",
         "26.1 GB"),
        # no expectation: the display band (good under 12 min) and no shading of the peak
        ("[]", "\x1b[32m10m00s\x1b[0m   pace", "peak     \x1b[0m\x1b[1;36m \x1b[0m26.1 GB"),
    ],
)  # fmt: skip
def test_epoch_time_and_memory_peak_are_shaded_against_the_recipes_expectations(
    tmp_path: Path, expectations: str, epoch: str, peak: str
) -> None:
    state_dir = tmp_path / "night-running"
    shutil.copytree(FIXTURES / "night-running", state_dir)
    rb = state_dir / "runbook-conservative.yaml"
    text = rb.read_text()
    start = text.index("expectations:")
    end = text.index("\n", text.index("final_loss", start))
    rb.write_text(text[:start] + f"expectations: {expectations}" + text[end:])
    out = frame(state_dir, styles=True)
    assert epoch in out
    assert peak in out


def test_fallbacks_are_listed_newest_first_with_their_reason() -> None:
    text = frame(FIXTURES / "night-fallbacks", width=140)
    slow, nan, oom = (text.index(k) for k in ("slow ", "nonfinite ", "oom "))
    assert slow < nan < oom
    assert "exit_code=11" in text and "schedules rescaled" in text
    assert "aggressive · partial" in text and "ended finished" in text


def test_failed_night_shows_the_failure_and_the_success_level() -> None:
    text = frame(FIXTURES / "night-failed")
    assert "failed" in text and "last failure crash: RuntimeError" in text
    assert "3 attempts without progress" in text


def test_two_night_plan_shows_each_night() -> None:
    text = frame(FIXTURES / "plan-success", width=120)
    assert text.count("succeeded") >= 2 and "should" in text
    assert "night 2 · aggressive · succeeded" in text


def test_partial_data_renders_na_not_a_crash(tmp_path: Path) -> None:
    var = tmp_path / "var"
    shutil.copytree(FIXTURES / "night-running", var)
    shutil.rmtree(var / "runs")
    text = frame(var, width=80)
    assert "N/A" in text and "no evaluation yet" in text and "no step events yet" in text
    assert "no state file" in frame(tmp_path / "empty")


def test_once_prints_one_frame_and_exits(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert run_status(FIXTURES / "plan-success", once=True) == 0
    assert "hjepa-night" in capsys.readouterr().out
    assert run_status(tmp_path, once=True) == 1


def test_sparkline_scales_and_resamples() -> None:
    assert sparkline([]) == "N/A"
    assert sparkline([1.0, 2.0, 3.0]) == "▁▅█"
    assert len(sparkline([float(i) for i in range(1000)], width=20)) == 20
    assert sparkline([2.0, 2.0]) == "▄▄"


def compact(state_dir: Path, width: int = 80, height: int = 24) -> str:
    now_file = state_dir / "NOW"
    now = float(now_file.read_text()) if now_file.exists() else None
    console = Console(record=True, width=width, height=height)
    console.print(render(SnapshotSource(state_dir).take(now=now), (width, height)))
    return console.export_text()


def test_compact_layout_fits_80x24_without_wrapping() -> None:
    text = compact(FIXTURES / "night-running")
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 24
    assert all(len(line) <= 80 for line in lines)
    for expected in (
        "plan sequential",
        "1 conservative",  # whole names, one line per night
        "2 aggressive",
        "22:00→06:00",  # window
        "epoch 13/50 · step",
        "deadline 06:00 · LATE by 35m00s",  # forecast against the deadline
        "img/s",
        "/ host ceiling 28 GB",  # memory against the host ceiling
        "fallback 22:16 oom:",  # the newest fallback
    ):
        assert expected in text, expected
    # every night on exactly one line: the status follows the name on the same line
    assert any("conservative" in ln and "running" in ln for ln in lines)
    # the full layout is kept for large terminals
    big = compact(FIXTURES / "night-running", width=150, height=50)
    assert "fallbacks, newest first" in big and "fallbacks, newest first" not in text


def test_compact_layout_cuts_long_names_instead_of_wrapping() -> None:
    text = compact(FIXTURES / "night-fallbacks", width=60, height=20)
    lines = text.rstrip("\n").splitlines()
    assert all(len(line) <= 60 for line in lines)
    assert any(ln.startswith("1 aggressive") and "partial" in ln for ln in lines)
    assert "…" in text  # the reason is cut at the edge


def test_width_flag_forces_the_layout(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    state_dir = tmp_path / "s"
    shutil.copytree(FIXTURES / "night-running", state_dir)
    assert run_status(state_dir, once=True, width=80) == 0
    out = capsys.readouterr().out
    assert "1 conservative" in out and max(len(x) for x in out.splitlines()) <= 80
