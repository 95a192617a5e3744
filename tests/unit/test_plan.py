"""Plans: schema errors, window timing, the night-2 decision, passed windows."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from orchestrator.core.state import Attempt, Success
from orchestrator.schedule.plan import (
    PLANS_DIR,
    PlanError,
    build_state,
    decide_night,
    first_window,
    load_plan,
    parse_duration,
    reconcile,
    resolve_plan_path,
)

TZ = datetime.now().astimezone().tzinfo


def at(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2025, 3, day, hh, mm, tzinfo=TZ)


def write_plan(tmp_path: Path, **changes: object) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data: {dataset: synthetic}\ntraining: {epochs: 3}\n")
    rb = tmp_path / "rb.yaml"
    rb.write_text("name: test\n")
    plan = {
        "name": "two",
        "nights": [
            {"name": "safe", "config": str(cfg), "runbook": str(rb)},
            {
                "name": "bold",
                "config": str(cfg),
                "runbook": str(rb),
                "requires": "previous_succeeded",
                "overrides": {"training.lr": "2e-4", "faults.nonfinite_at_step": 5},
            },
        ],
    }
    plan.update(changes)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


@pytest.mark.parametrize("name", ["sequential", "conservative-only", "aggressive-only", "demo"])
def test_shipped_plans_load(name: str) -> None:
    plan = load_plan(resolve_plan_path(name))
    assert plan.name == name
    assert resolve_plan_path(name) == PLANS_DIR / f"{name}.yaml"


def test_sequential_runs_aggressive_only_after_success() -> None:
    plan = load_plan(resolve_plan_path("sequential"))
    assert [n.requires for n in plan.nights] == ["none", "previous_succeeded"]
    assert plan.nights[1].otherwise == "repeat_previous"
    # night 2 takes the aggressive runbook's 9 h (the recipe's "must < 9 h"), ending by 06:30
    assert [n.window_s for n in plan.nights] == [8 * 3600, 9 * 3600]
    assert plan.nights[1].window is None and plan.nights[1].start == "21:30"


def test_night_two_window_from_the_runbook_unless_the_plan_sets_one(tmp_path: Path) -> None:
    path = resolve_plan_path("sequential")
    state = build_state(load_plan(path), path, at(10, 15), start_now=False)
    n2 = state.nights[1]
    assert (n2.window_start, n2.deadline) == (at(11, 21, 30).isoformat(), at(12, 6, 30).isoformat())
    text = path.read_text().replace('start: "21:30"', 'start: "21:30"\n    window: 8h')
    own = tmp_path / "own.yaml"
    own.write_text(text)
    assert load_plan(own).nights[1].window_s == 8 * 3600


def test_unknown_plan_name_lists_the_known_ones() -> None:
    with pytest.raises(PlanError, match="sequential"):
        resolve_plan_path("no-such-plan")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"colour": "red"}, "colour: unknown key"),
        ({"report_at": "6:30am"}, "report_at"),
        ({"late_start_min": "soon"}, "late_start_min"),
        ({"nights": []}, "nights"),
        ({"notify": {"command": "x", "on": ["sunrise"]}}, "notify.on"),
        ({"notify": {"cmd": "x"}}, "notify"),
    ],
)
def test_plan_errors_name_file_and_key(tmp_path: Path, changes: dict, expected: str) -> None:
    path = write_plan(tmp_path, **changes)
    with pytest.raises(PlanError) as err:
        load_plan(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_night_errors_name_the_night(tmp_path: Path) -> None:
    path = write_plan(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["nights"][1]["start"] = "25:00"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PlanError, match=r"nights\.1\.start"):
        load_plan(path)
    raw["nights"][1]["start"] = "22:00"
    raw["nights"][1]["overrides"] = {"training.lrr": 1e-4}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PlanError, match=r"(?s)nights\.1\.overrides.*training\.lrr"):
        load_plan(path)
    raw["nights"][1]["overrides"] = {}
    raw["nights"][0]["config"] = "missing.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PlanError, match=r"nights\.0\.config: file not found"):
        load_plan(path)


def test_parse_duration() -> None:
    assert parse_duration("8h") == 28800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("300s") == 300
    with pytest.raises(ValueError):
        parse_duration("8 hours")


@pytest.mark.parametrize(
    ("now", "start_now", "expected"),
    [
        (at(10, 15), False, at(10, 22)),  # afternoon: tonight
        (at(10, 23), False, at(10, 22)),  # late: tonight's window, 7 h left
        (at(11, 5), False, at(11, 22)),  # 1 h left of last night's window: next evening
        (at(10, 15), True, at(10, 15)),  # --now
    ],
)
def test_first_window(tmp_path: Path, now: datetime, start_now: bool, expected: datetime) -> None:
    plan = load_plan(write_plan(tmp_path))
    assert first_window(plan.nights[0], plan, now, start_now) == expected


def test_build_state_puts_night_two_on_the_next_evening(tmp_path: Path) -> None:
    path = write_plan(tmp_path)
    state = build_state(load_plan(path), path, at(10, 15), start_now=True)
    n1, n2 = state.nights
    assert (n1.name, n2.name) == ("n1-safe", "n2-bold")
    assert n1.window_start == at(10, 15).isoformat() and n1.deadline == at(10, 23).isoformat()
    assert n2.window_start == at(11, 22).isoformat()  # first 22:00 after night 1's deadline
    assert state.next_start == n1.window_start
    assert state.plan and state.plan.kind == "sequential" and state.plan.file == str(path)


def test_night_two_runs_as_planned_after_success(tmp_path: Path) -> None:
    path = write_plan(tmp_path)
    plan = load_plan(path)
    state = build_state(plan, path, at(10, 15), start_now=True)
    state.nights[0].status = "succeeded"
    state.nights[0].success = Success(level="should")
    d = decide_night(state, plan, 1, at(10, 23))
    n2 = state.nights[1]
    assert n2.name == "n2-bold" and n2.status == "pending"
    assert n2.overrides == {"training.lr": "2e-4", "faults.nonfinite_at_step": 5}
    assert d.kind == "plan" and "succeeded" in d.trigger
    assert d.evidence["previous_success_level"] == "should"
    assert n2.decisions == [d]


def test_night_two_repeats_night_one_with_what_it_learned(tmp_path: Path) -> None:
    path = write_plan(tmp_path)
    plan = load_plan(path)
    state = build_state(plan, path, at(10, 15), start_now=True)
    n1 = state.nights[0]
    n1.status = "partial"
    n1.overrides = {"data.batch_size": 24, "faults.oom_above_micro_batch": 24}
    d = decide_night(state, plan, 1, at(10, 23))
    n2 = state.nights[1]
    assert n2.name == "n2-safe" and n2.config == n1.config and n2.runbook == n1.runbook
    assert n2.overrides == {"data.batch_size": 24}  # injected faults are not carried
    assert "partial" in d.trigger and "repeat safe" in d.action
    assert n2.window_start == at(11, 22).isoformat()  # keeps its planned window


def test_otherwise_skip_and_after_previous_window(tmp_path: Path) -> None:
    path = write_plan(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["nights"][1].update(start="after_previous", window="5m", otherwise="skip")
    path.write_text(yaml.safe_dump(raw))
    plan = load_plan(path)
    state = build_state(plan, path, at(10, 15), start_now=True)
    assert state.nights[1].window_start is None
    state.nights[0].status = "failed"
    decide_night(state, plan, 1, at(10, 16))
    n2 = state.nights[1]
    assert n2.status == "skipped" and "failed" in (n2.reason or "")
    assert n2.window_start == at(10, 16).isoformat()
    assert n2.deadline == (at(10, 16) + timedelta(minutes=5)).isoformat()
    assert state.next_start is None


def _events(run_dir: Path, events: list[dict]) -> None:
    run_dir.mkdir(parents=True)
    with (run_dir / "events.jsonl").open("w") as fh:
        for e in events:
            fh.write(json.dumps({"v": 1, "ts": 0.0, **e}) + "\n")


def test_passed_windows_become_skipped_partial_or_failed(tmp_path: Path) -> None:
    path = write_plan(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["nights"].append(dict(raw["nights"][0], name="third"))
    path.write_text(yaml.safe_dump(raw))
    state = build_state(load_plan(path), path, at(10, 15), start_now=True)
    n1, n2, n3 = state.nights
    run1, run3 = tmp_path / "r1", tmp_path / "r3"
    c1, c2 = str(tmp_path / "c1.pt"), str(tmp_path / "c2.pt")
    _events(
        run1,
        [
            {"type": "checkpoint", "path": c1, "epoch": 1, "step": 10, "verified": True},
            {"type": "eval", "epoch": 1, "knn": {"20": 0.4}, "linear_probe": 0.5,
             "feature_std": 0.2, "effective_rank": 9.0},
            {"type": "checkpoint", "path": c2, "epoch": 2, "step": 20, "verified": True},
        ],
    )  # fmt: skip
    for c in (c1, c2):
        Path(c).write_bytes(b"a checkpoint")
    _events(run3, [{"type": "eval", "epoch": 0, "knn": {}, "linear_probe": 0.1,
                    "feature_std": 0.2, "effective_rank": 3.0}])  # fmt: skip
    n1.status = "running"
    n1.attempts = [Attempt(index=1, run_dir=str(run1))]
    n3.status = "running"
    n3.window_start, n3.deadline = at(12, 22).isoformat(), at(13, 6).isoformat()
    n3.attempts = [Attempt(index=1, run_dir=str(run3))]
    changed = reconcile(state, at(13, 7))
    assert len(changed) == 3
    assert n1.status == "partial" and n1.best_checkpoint == c1  # newest *evaluated*
    assert n1.final_metrics and n1.final_metrics.linear_probe == 0.5
    assert n2.status == "skipped" and "passed while no daemon" in (n2.reason or "")
    assert n3.status == "failed"  # started, but only the epoch-0 eval of a random encoder
    assert reconcile(state, at(13, 8)) == []


def test_plan_notify_section(tmp_path: Path) -> None:
    path = write_plan(tmp_path, notify={"command": "ntfy publish t", "on": ["failed"]})
    plan = load_plan(path)
    assert plan.notify is not None and plan.notify.on == ["failed"]
    assert plan.notify.timeout_s == 10
    assert load_plan(write_plan(tmp_path)).notify is None


def test_plan_check_accepts_every_override_the_worker_accepts(tmp_path: Path) -> None:
    """The plan check loads the config the way the worker does: the alias
    ``evaluation.eval_frequency`` on a recipe that also spells ``experiment.eval_frequency``
    follows along instead of disagreeing; a value the worker refuses is refused here too."""
    from orchestrator.night.history import override_args
    from trainer.config import load_config

    recipe = str(Path("configs/overnight_training_conservative.yaml").resolve())
    path = write_plan(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["nights"][1]["config"] = recipe
    raw["nights"][1]["overrides"] = {"evaluation.eval_frequency": 20}
    path.write_text(yaml.safe_dump(raw))
    plan = load_plan(path)
    cfg = load_config(recipe, override_args(plan.nights[1].overrides))
    assert cfg.evaluation.eval_frequency == 20 and cfg.experiment.eval_frequency == 20
    raw["nights"][1]["overrides"] = {"evaluation.eval_frequency": "often"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PlanError, match=r"(?s)nights\.1\.overrides.*eval_frequency"):
        load_plan(path)
