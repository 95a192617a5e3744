"""Morning reports generated from recorded state dirs: content a person acts on, valid PNGs."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from orchestrator.views.report.write import ReportError, cmd_report, write_report

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "states"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def linked_pngs(report: Path) -> list[Path]:
    names = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    return [report.parent / n for n in names]


def assert_valid_pngs(report: Path, expected: int) -> None:
    pngs = linked_pngs(report)
    assert len(pngs) == expected
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC, png
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.size[0] > 400 and im.size[1] > 200


@pytest.mark.slow
def test_successful_two_night_plan(tmp_path: Path) -> None:
    var = copy("plan-success", tmp_path)
    path = write_report(var)
    assert path == var / "reports" / "morning-2025-03-16.md"
    text = path.read_text()
    first_screen = text.split("## Night 1")[0]
    assert "✅ **Night 1 — conservative: SUCCEEDED**, success level **should**" in first_screen
    assert "✅ **Night 2 — aggressive: SUCCEEDED**" in first_screen
    assert "✓ linear probe > 55.0%: 63.1%" in first_screen  # the check with its numbers
    assert "✗ linear probe > 73.0%: 69.4%" in first_screen
    # decision matrix on the last night: 69.4% → resume for 50-100 more epochs
    assert "65-70%, good" in first_screen and "training.epochs=90" in text
    assert "## Conservative vs aggressive" in text
    assert "**+6.3 pts**." in text  # its runbook has no gain criterion: no verdict
    assert "No fallbacks were needed." in text
    # the recipe's expectations beside what the night measured
    assert "| epoch time (min) | 9 – 10 | 9 | inside | recipe |" in text
    assert "| kNN k=20 | 55.0% – 65.0% | 58.0% | inside | recipe |" in text
    assert "| feature variance | 0.02 | 0.22 | +0.2 |" in text
    # every criterion with the evidence it read, in its own section
    assert "### Success criteria and their evidence" in text
    assert (
        "| must | ✓ features intact [flash attention]: yes | pass | "
        "features: flash_attention: on |" in text
    )
    assert "| linear probe | 24.0% | 63.1% | +39.1 pts |" in text  # gain over random init
    assert "--eval-only" in text and "--resume" in text
    assert "runs/conservative/attempt-01/checkpoints/ckpt-e0050-s00005000.pt" in text
    assert_valid_pngs(path, 8)


@pytest.mark.slow
def test_night_with_fallbacks(tmp_path: Path) -> None:
    var = copy("night-fallbacks", tmp_path)
    text = write_report(var).read_text()
    assert "⚠️ **Night 1 — aggressive: PARTIAL**" in text
    assert "✗ linear probe > 60.0%: 57.7%" in text
    assert "< 60%, poor" in text  # decision matrix
    for trigger, evidence in (
        ("oom", "tree_rss_gb=29.5"),
        ("nonfinite", "step=520"),
        ("slow", "epoch_s=740"),
    ):
        assert re.search(rf"\| {trigger} \|.*{re.escape(evidence)}", text), trigger
    assert "LR scaled linearly x1.125" in text  # the effect, as recorded
    assert "worker fatal **oom**" in text and "worker fatal **nonfinite**" in text
    assert "attempt 3 started, resumed from `ckpt-e0004-s00000400.pt`" in text
    assert "forecast error (first forecast − actual end): **-20m00s**" in text
    assert "--set data.batch_size=12 --set training.accumulation_steps=6" in text
    assert "peak memory: worker tree 29.3 GB (rss)" in text and "ceilings: host 28 GB" in text
    assert_valid_pngs(var / "reports" / "morning-2025-03-15.md", 4)


@pytest.mark.slow
def test_peak_memory_names_the_tree_measure_the_ceiling_checked(tmp_path: Path) -> None:
    var = copy("night-fallbacks", tmp_path)
    for samples in var.glob("runs/*/attempt-*/samples.jsonl"):
        lines = [json.loads(x) for x in samples.read_text().splitlines() if x.strip()]
        for line in lines:  # PSS: the shared pages of the loaders counted once, not 4 times
            line.update(tree_mem=line["tree_rss"] // 2, tree_measure="pss")
        samples.write_text("".join(json.dumps(x) + "\n" for x in lines))
    text = write_report(var).read_text()
    assert "peak memory: worker tree 14.7 GB (pss)" in text  # half of 29.3 GB


@pytest.mark.slow
def test_failed_night_says_what_broke_what_was_tried_and_what_to_do(tmp_path: Path) -> None:
    var = copy("night-failed", tmp_path)
    text = write_report(var).read_text()
    first_screen = text.split("## Night 1")[0]
    assert "❌ **Night 1 — conservative: FAILED**" in first_screen
    assert "No evaluated model. Broke with crash" in first_screen
    assert "Tried 1 fallback" in first_screen and "worker.log" in first_screen
    assert "--set model.use_flash_attention=false" in first_screen
    assert "| feature | disable flash_attention |" in text
    assert "| must | ✗ features intact [flash attention]: no | FAIL | features: " in text
    assert "flash_attention: switched off: disable flash_attention |" in text
    assert "ckpt-e0001-s00000100.pt --eval-only" in text
    # loss, kNN (epoch 0), memory and epoch times were all recorded before it broke
    assert_valid_pngs(var / "reports" / "morning-2025-03-14.md", 4)


@pytest.mark.slow
def test_night_in_progress_and_single_night_out_file(tmp_path: Path) -> None:
    var = copy("night-running", tmp_path)
    out = tmp_path / "elsewhere" / "night1.md"
    path = write_report(var, night=1, out=out)
    assert path == out
    text = out.read_text()
    assert "⏳ **Night 1 — conservative: RUNNING** — not judged yet" in text
    assert "Still running" in text
    # no best recorded yet: the newest checkpoint is offered under its own name
    assert "- newest checkpoint (no best recorded yet): `" in text
    assert "best checkpoint:" not in text
    assert all(p.parent == out.parent for p in linked_pngs(out))  # plots beside the report
    assert_valid_pngs(out, 4)
    with pytest.raises(ReportError, match="no night 3"):
        write_report(var, night=3)


@pytest.mark.slow
def test_demo_plan_next_step_is_relative_to_the_random_encoder(tmp_path: Path) -> None:
    var = copy("plan-success", tmp_path)
    state = json.loads((var / "state.json").read_text())
    state["plan"]["name"] = "demo"
    (var / "state.json").write_text(json.dumps(state))
    text = write_report(var, night=1).read_text()
    assert "Demo: the encoder learned features the random one lacks" in text
    assert "+39.1 pts" in text and "hjepa-night start --plan sequential" in text


@pytest.mark.slow
def test_cmd_report_exit_codes(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    var = copy("night-failed", tmp_path)
    args = argparse.Namespace(state_dir=str(var), night=None, out=None)
    assert cmd_report(args) == 0
    out = capsys.readouterr().out
    assert "report written:" in out and "FAILED" in out
    assert (
        cmd_report(argparse.Namespace(state_dir=str(tmp_path / "none"), night=None, out=None)) == 1
    )


@pytest.mark.slow
def test_preflight_plan_beside_the_measured_night(tmp_path: Path) -> None:
    var = copy("plan-success", tmp_path)
    state = json.loads((var / "state.json").read_text())
    config = state["nights"][0]["config"]
    row = {
        "config": config,
        "applied_to": "plan.yaml",
        "epochs": 47,
        "micro": 32,
        "accum": 1,
        "recipe_epochs": 50,
        "epoch_s": 540.0,
        "night_s": 27000.0,
        "window_s": 28800.0,
    }
    (var / "preflight.jsonl").write_text(json.dumps(row) + "\n")
    text = write_report(var, night=1).read_text()
    assert "### Planned by preflight vs measured" in text
    assert "| epochs | 47 (recipe 50) |" in text
    assert "| night length | 450.0 min of 480.0 |" in text
    # without the file the section is absent
    (var / "preflight.jsonl").unlink()
    assert "Planned by preflight" not in write_report(var, night=1).read_text()


def test_an_expectation_outside_its_range_says_which_side() -> None:
    from orchestrator.core.runbook import Expectation
    from orchestrator.views.report.expected import verdict

    e = Expectation(measure="epoch_minutes", low=9, high=10)
    assert [verdict(e, v) for v in (8.0, 9.5, 12.0, None)] == [
        "BELOW",
        "inside",
        "ABOVE",
        "not measured",
    ]
    assert verdict(Expectation(measure="final_loss", high=0.3), 0.1) == "inside"
    with pytest.raises(ValueError, match="low or high"):
        Expectation(measure="knn_20")


def test_the_gain_over_the_previous_night_is_judged_by_its_recorded_criterion(
    tmp_path: Path,
) -> None:
    """No verdict of its own: the line quotes the night's recorded gain_over_previous_night
    check, from the criterion in its runbook, and says nothing when there is none."""
    var = copy("plan-success", tmp_path)
    assert (
        "Aggressive − conservative linear probe: **+6.3 pts**.\n" in write_report(var).read_text()
    )
    rb = var / "runbook-aggressive.yaml"
    rb.write_text(
        rb.read_text().replace(
            "  should: [",
            '  should: [{metric: gain_over_previous_night, op: ">=", value: 0.05}, ',
        )
    )
    state = json.loads((var / "state.json").read_text())
    name = "gain_over_previous_night >= 0.05"
    check = {"name": name, "level": "should", "passed": False, "value": 0.063, "threshold": 0.05}
    state["nights"][1]["success"]["checks"].append(check)
    (var / "state.json").write_text(json.dumps(state))
    text = write_report(var).read_text()
    assert "**+6.3 pts** (misses its should criterion of +5 points)." in text


def test_feature_costs_per_night_and_the_nights_difference(tmp_path: Path) -> None:
    """Each night's feature table from the probe rows in preflight.jsonl (its own night-start
    row before preflight's), and the two nights' accuracy difference, labelled as the nights'
    difference and not as any feature's contribution."""
    var = copy("plan-success", tmp_path)
    gb = 1024**3

    def side(ms: float | None, peak: float | None = None, **more: object) -> dict:
        return {"ms_per_step": ms, "peak_bytes": None if peak is None else int(peak * gb), **more}

    rows = [
        {"config": "configs/overnight_training_conservative.yaml", "source": "preflight",
         "applied_to": None, "micro": 32, "accum": 1,
         "features": [{"feature": "flash_attention", "planned_on": True,
                       "on": side(200.0, 12.0), "off": side(500.0, 15.5)}]},
        {"config": "configs/overnight_training_aggressive.yaml", "source": "night start",
         "night": "aggressive", "micro": 16, "accum": 4, "steps": 2, "seconds": 41.5,
         "features": [
             {"feature": "flash_attention", "planned_on": True, "on": side(400.0, 18.0),
              "off": {"oom": True}},
             {"feature": "gradient_checkpointing", "planned_on": False,
              "on": side(520.0, 11.0), "off": side(400.0, 18.0)},
             {"feature": "fpn", "planned_on": True, "on": side(400.0, 18.0),
              "off": side(380.0, 17.5)},
             {"feature": "contrastive", "planned_on": True, "on": side(400.0, 18.0),
              "off": {"error": "not measured (the probe was cut short)"}}],
         "error": "cut at its 120 s bound"},
    ]  # fmt: skip
    (var / "preflight.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(var).read_text()
    night1, night2 = text.split("## Night 2")[0], text.split("## Night 2")[1]
    assert "### What each feature cost" in night1
    assert "| flash attention (SDPA) | 200 ms | 500 ms | 2.50x | 12.00 GB | 15.50 GB |" in night1
    assert "preflight probe at micro-batch 32 × accumulation 1" in night1
    assert "| flash attention (SDPA) | 400 ms | OOM | N/A | 18.00 GB | OOM |" in night2
    assert "| gradient checkpointing (off in the plan) | 520 ms | 400 ms | 0.77x |" in night2
    assert "| FPN | 400 ms | 380 ms | 0.95x | 18.00 GB | 17.50 GB |" in night2
    assert "N/A (not measured (the probe was cut short))" in night2
    assert "night start probe at micro-batch 16 × accumulation 4, 2 timed steps" in night2
    assert "The probe did not finish: cut at its 120 s bound" in night2
    # preflight's plan table is for applied plans only: this row was not applied
    assert "Planned by preflight" not in text
    across = text.split("## Features across the nights")[1]
    assert "| flash attention (SDPA) | on, 2.50x | on |" in across
    assert "| FPN | off | on, 0.95x |" in across
    # 69.4% - 63.1% linear probe, kNN@20 66% - 58%, kNN@1 60% - 52%
    assert "**linear probe +6.3 pts, kNN k=20 +8.0 pts, kNN k=1 +8.0 pts**" in across
    assert "difference between the two nights as a whole" in across
    assert "not what any one feature bought" in across
    # without a probe row: no feature section
    (var / "preflight.jsonl").unlink()
    text = write_report(var).read_text()
    assert "What each feature cost" not in text and "| FPN |" not in text
