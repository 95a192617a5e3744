"""The tool installs like one: build the wheel, install it into a fresh venv, run from an
empty directory (shipped plans and runbooks from the package, an ``init`` copy winning)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo_plan_from_an_empty_dir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    wheels = tmp_path / "wheels"
    build = tmp_path / "src"  # build from a copy: no build/ or egg-info left in the tree
    build.mkdir()
    for name in ("pyproject.toml", "README.md", "trainer", "orchestrator", "configs", "runbooks"):
        subprocess.run(["cp", "-r", str(ROOT / name), str(build / name)], check=True)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(build)], tmp_path, env)  # fmt: skip
    wheel = next(wheels.glob("hjepa_night-*.whl"))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    py = venv / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    tmp_path, env).strip())  # fmt: skip
    # torch and the other dependencies come from this interpreter's site-packages (a plain
    # path line: its own .pth files, e.g. an editable install of this project, are not run)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
         str(wheel)], tmp_path, env)  # fmt: skip
    exe = venv / "bin" / "hjepa-night"
    where = run([str(py), "-c", "import orchestrator; print(orchestrator.__file__)"], tmp_path, env)
    assert where.startswith(str(site)), where

    empty = tmp_path / "work"
    empty.mkdir()
    # shipped files resolve from the package: the demo plan loads, preflight's runbook exists
    out = subprocess.run([str(exe), "start", "--plan", "no-such"], cwd=empty, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "demo" in out.stderr and "sequential" in out.stderr
    # the aggressive recipe's ImageNet-100 class list resolves from the package too: the
    # worker's --check from the empty dir names the shipped list and counts its 100 classes
    probe = (
        "import json; from trainer.config import load_config; from trainer.config.paths import "
        "resolve_data; from trainer.runtime.check import dataset_facts; from trainer.data.datasets "
        "import "
        "class_list_path, num_classes; "
        "cfg = load_config(resolve_data('configs/overnight_training_aggressive.yaml')); "
        "print(json.dumps({'list': str(class_list_path(cfg.data)), 'n': num_classes("
        "cfg.data.datasets[0], cfg.data), 'rows': dataset_facts(cfg)}))"
    )
    facts = json.loads(run([str(py), "-c", probe], empty, env).splitlines()[-1])
    shipped_list = site / "orchestrator" / "shipped" / "configs" / "imagenet100_classes.txt"
    assert facts["list"] == str(shipped_list) and facts["n"] == 100, facts
    [row] = facts["rows"]
    assert row["name"] == "imagenet100" and row["status"] == "missing", row
    assert str(shipped_list) in row["message"] and "hjepa-night data imagenet100" in row["message"]
    # init writes editable copies; a shortened demo plan there wins over the shipped one
    run([str(exe), "init"], empty, env)
    assert (empty / "runbooks" / "demo.yaml").is_file()
    plan_file = empty / "configs" / "plans" / "demo.yaml"
    plan = yaml.safe_load(plan_file.read_text())
    short = {"training.epochs": 1, "training.warmup_epochs": 0,
             "data.synthetic.num_train": 256, "data.synthetic.num_eval_train": 128,
             "data.synthetic.num_eval_test": 128, "evaluation.max_train_samples": 128,
             "evaluation.max_test_samples": 128, "evaluation.rank_samples": 128}  # fmt: skip
    plan["nights"] = plan["nights"][:1]
    plan["nights"][0]["overrides"] = short
    plan["nights"][0]["window"] = "10m"
    plan_file.write_text(yaml.safe_dump(plan, sort_keys=False))
    # the init copy of the runbook, judged only on what the night owes (not on how much one
    # tiny epoch learns): the night has one outcome, and its verdict shows which copy it read
    runbook_file = empty / "runbooks" / "demo.yaml"
    runbook = yaml.safe_load(runbook_file.read_text())
    runbook["success"]["must"] = [c for c in runbook["success"]["must"] if c["metric"] != "knn_20"]
    runbook_file.write_text(yaml.safe_dump(runbook, sort_keys=False))
    run([str(exe), "start", "--plan", "demo", "--now", "--foreground", "--no-tui"], empty, env)
    state = json.loads((empty / "var" / "state.json").read_text())
    night = state["nights"][0]
    assert night["status"] == "succeeded", night.get("reason")
    checks = [c["name"] for c in night["success"]["checks"]]
    assert checks and not any(name.startswith("knn_20") for name in checks), checks
    assert night["config"].startswith(str(empty / "configs")), night["config"]
    assert night["runbook"].startswith(str(empty / "runbooks")), night["runbook"]
    assert list((empty / "var" / "reports").glob("morning-*.md"))
