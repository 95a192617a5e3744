"""A --set of one spelling of a knob speaks for the knob (trainer.config SAME / REPLACED):
the shipped recipes use upstream spellings, and the fallback rungs of the shipped runbooks
set ours. Before, each of these was a config error at the moment a night needed the rung."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
CONS = ROOT / "configs/overnight_training_conservative.yaml"
AGGR = ROOT / "configs/overnight_training_aggressive.yaml"
CIFAR_STL = json.dumps(
    [
        {"name": "cifar10", "path": "./data", "weight": 0.5},
        {"name": "stl10", "path": "./data", "weight": 0.5},
    ]
)


def test_dataset_list_replaces_the_single_dataset_spelling() -> None:
    cfg = load_config(AGGR, [f"data.datasets={CIFAR_STL}"])  # the aggressive dataset fallback
    assert [d.name for d in cfg.data.datasets] == ["cifar10", "stl10"]


def test_single_dataset_replaces_the_list() -> None:
    cfg = load_config(CONS, ["data.dataset=cifar10", "data.data_path=/d"])
    assert [(d.name, d.path) for d in cfg.data.datasets] == [("cifar10", "/d")]


@pytest.mark.parametrize(
    "key", ["evaluation.eval_frequency", "experiment.eval_frequency", "evaluation.knn.frequency"]
)
def test_eval_frequency_spellings_follow_the_one_set(key: str) -> None:
    cfg = load_config(CONS, [f"{key}=20"])  # the conservative slow.then rung
    assert cfg.evaluation.eval_frequency == 20


def test_fpn_spellings_follow_the_one_set(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        AGGR.read_text().replace("  use_fpn: true\n  fpn:\n", "  fpn:\n    use_fpn: true\n")
    )
    assert load_config(f).model.use_fpn is True
    assert load_config(f, ["model.use_fpn=false"]).model.use_fpn is False


def test_contradictions_inside_one_file_are_still_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        CONS.read_text().replace("  eval_frequency: 10\nmodel:", "  eval_frequency: 7\nmodel:")
    )
    with pytest.raises(ConfigError, match=r"experiment\.eval_frequency=7 disagrees"):
        load_config(f)


def test_two_sets_that_disagree_are_an_error() -> None:
    with pytest.raises(ConfigError, match="disagrees"):
        load_config(CONS, ["evaluation.eval_frequency=20", "experiment.eval_frequency=5"])
