"""Every rung of every shipped runbook, applied to its own recipe, mid-run, resuming.

Generated from the files: each config in ``configs/*.yaml`` with the runbook it runs under
(``default_runbook_for``), shrunk to run on a CPU with the SAME switches on (the recipe's
datasets in their real on-disk formats, features, batch and accumulation; only the ViT is tiny
and the images 32 px). One chain per recipe: a first attempt trains a step and is stopped
through the control file (it checkpoints), then every rung of every ladder is applied in the
order a night would meet them (oom, nonfinite, health, slow.then, features, dataset fallback), each
computed by the real policy functions from the night's history — so rungs compose as they do
across a night's restarts — and each next attempt must resume from the previous checkpoint
(never step 0), train on, and checkpoint again. A rung added to a runbook is covered without
touching this test; a rung the policy skips on purpose (it would change nothing) is reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.runbook import FEATURE_KEYS, Runbook, default_runbook_for, load_runbook
from orchestrator.night.history import config_facts
from orchestrator.night.runner import override_args
from orchestrator.policy import NightHistory
from orchestrator.policy import ladders as L
from tests.helpers.fake_datasets import write_cifar10, write_imagenet100, write_stl10
from tests.workerutil import ROOT, env, events, wait_for
from trainer.config import Config, load_config
from trainer.events import Control, write_control

RECIPES = sorted(p for p in (ROOT / "configs").glob("*.yaml"))

# Tiny ViT and tiny images; every switch of the recipe stays as it is.
SHRINK: dict[str, Any] = {
    "model.encoder_type": "custom",
    "model.embed_dim": 48,
    "model.depth": 2,
    "model.num_heads": 3,
    "model.patch_size": 4,
    "model.predictor.depth": 1,
    "model.predictor.embed_dim": 48,
    "model.predictor.num_heads": 3,
    "model.fpn.feature_dim": 48,
    "data.image_size": 32,
    "data.num_workers": 0,
    "data.synthetic.num_train": 192,
    "data.synthetic.num_eval_train": 64,
    "data.synthetic.num_eval_test": 64,
    "device": "cpu",
    "training.epochs": 100,  # room for every attempt's steps (none reaches the end)
    "evaluation.eval_at_start": False,
    "evaluation.max_train_samples": 32,
    "evaluation.max_test_samples": 32,
    "evaluation.rank_samples": 32,
    "checkpoint.every_n_steps": 1,
    "logging.log_frequency": 1,
    "logging.heartbeat_s": 1.0,
}
# One optimizer step an attempt: enough to show it resumed at the checkpoint and trains on
# (each attempt checkpoints every step); each further step cost seconds in every one of the
# ~65 attempts of the four chains.
STEPS_PER_ATTEMPT = 1


def shrink_for(cfg: Config) -> dict[str, Any]:
    out = dict(SHRINK)
    if not cfg.model.use_fpn:
        out.pop("model.fpn.feature_dim")
    return out


def write_data(root: Path) -> None:
    write_cifar10(root / "data", n_train=120, n_test=40)
    write_stl10(root / "data", n_train=20, n_test=20, n_unlabeled=100)
    write_imagenet100(
        root / "data" / "imagenet", ROOT / "configs/imagenet100_classes.txt", n_per_class=1, size=36
    )


def ladder_walk(rb: Runbook) -> list[tuple[str, int]]:
    """(ladder, rung index) in the order a night meets them."""
    walk = [("oom", i) for i in range(len(rb.ladders.oom))]
    walk += [("nonfinite", i) for i in range(len(rb.ladders.nonfinite))]
    walk += [("health", i) for i in range(len(rb.ladders.health))]
    walk += [("slow", i) for i in range(len(rb.ladders.slow.then))]
    walk += [("features", i) for i in range(len(rb.ladders.features))]  # i: runbook order
    if rb.ladders.dataset_fallback is not None:
        walk.append(("data", 0))
    return walk


class Chain:
    """One recipe's night, attempt after attempt, with the overrides a night would carry."""

    def __init__(self, recipe: Path, rb: Runbook, work: Path) -> None:
        self.recipe, self.rb, self.work = recipe, rb, work
        base = load_config(recipe)
        self.overrides: dict[str, Any] = shrink_for(base)
        self.base_eff = self.cfg().effective_batch
        self.rungs_used: dict[str, int] = {}
        self.disabled: list[str] = []
        self.attempt = 0
        self.last_step = 0
        self.log: list[str] = []

    def cfg(self) -> Config:
        return load_config(self.recipe, override_args(self.overrides))

    def history(self) -> NightHistory:
        return NightHistory(
            attempts=self.attempt,
            attempts_without_progress=0,
            config=config_facts(self.cfg()),
            base_effective_batch=self.base_eff,
            overrides=dict(self.overrides),
            rungs_used=dict(self.rungs_used),
            disabled_features=tuple(self.disabled),
        )

    def step_for(self, ladder: str, index: int) -> L.Step | None:
        h = self.history()
        if ladder == "oom":
            return L.oom_step(h, self.rb)
        if ladder == "nonfinite":
            return L.nonfinite_step(h, self.rb)
        if ladder == "health":
            return L.health_step(h, self.rb)
        if ladder == "slow":
            return L.slow_then_step(h, self.rb)
        if ladder == "features":
            named = self.rb.ladders.features[index]
            if not h.config.features.get(named, False):
                return None  # off in this recipe: nothing to disable
            return L.feature_step(h, self.rb, named)
        return L.dataset_step(h, self.rb)

    def run_attempt(self, resume: Path | None) -> Path:
        self.attempt += 1
        run_dir = self.work / f"attempt-{self.attempt:02d}"
        cmd = [
            sys.executable,
            "-m",
            "trainer",
            "--config",
            str(self.recipe),
            "--run-dir",
            str(run_dir),
        ]
        if resume is not None:
            cmd += ["--resume", str(resume)]
        for item in override_args(self.overrides):
            cmd += ["--set", item]
        run_dir.mkdir(parents=True)
        with (run_dir / "worker.log").open("wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=self.work, env=env(), stdout=log, stderr=subprocess.STDOUT
            )
            target = self.last_step + STEPS_PER_ATTEMPT

            def trained() -> bool:
                return proc.poll() is not None or any(
                    e["step"] >= target for e in events(run_dir, "step")
                )

            ok = wait_for(trained, timeout=240, interval=0.2)
            write_control(run_dir, Control(seq=1, stop=True))
            try:
                code = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        tail = (run_dir / "worker.log").read_text(errors="replace")[-3000:]
        where = f"{self.recipe.name} attempt {self.attempt} ({' → '.join(self.log)})"
        assert ok and code == 3, f"{where}: exit {code}\n{json.dumps(self.overrides)}\n{tail}"
        started = events(run_dir, "started")[0]
        if resume is not None:
            assert started["start_step"] == self.last_step > 0, f"{where}: did not resume"
            assert events(run_dir, "resumed"), where
        steps = [e["step"] for e in events(run_dir, "step")]
        assert steps and steps[0] == self.last_step + 1 and max(steps) >= target, (where, steps)
        assert not events(run_dir, "fatal"), where
        self.last_step = max(e["step"] for e in events(run_dir, "checkpoint"))
        return run_dir


def _section(cfg: Config, key: str) -> tuple[Any, str]:
    section, name = key.split(".")
    return getattr(cfg, section), name


def recipe_id(p: Path) -> str:
    return p.stem


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_every_rung_resumes_and_trains_on(recipe: Path, tmp_path: Path) -> None:
    rb = load_runbook(default_runbook_for(recipe))
    write_data(tmp_path)
    chain = Chain(recipe, rb, tmp_path)
    run_dir = chain.run_attempt(None)
    applied, skipped = [], []
    for ladder, index in ladder_walk(rb):
        if ladder != "features" and chain.rungs_used.get(ladder, 0) > index:
            continue  # taken already (a rung that would change nothing moved the ladder on)
        step = chain.step_for(ladder, index)
        if step is None or (ladder != "features" and step.rung != index):
            skipped.append(f"{ladder}[{index}]")  # the policy skips it: it changes nothing
            if step is None:
                if ladder != "features":
                    chain.rungs_used[ladder] = index + 1
                continue
        load_config(recipe, override_args({**chain.overrides, **step.overrides}))  # applies
        chain.overrides.update(step.overrides)
        chain.rungs_used[ladder] = step.rung + 1
        if ladder == "features":
            chain.disabled.append(step.evidence["feature"])
        chain.log.append(f"{ladder}[{step.rung}] {step.effect}")
        applied.append(f"{ladder}[{step.rung}]")
        previous = run_dir
        run_dir = chain.run_attempt(previous)
        if ladder == "features":
            feature = step.evidence["feature"]
            assert getattr(*_section(chain.cfg(), FEATURE_KEYS[feature])) is False
            started = events(run_dir, "started")[0]
            assert started["features"].get(feature) == "off", (feature, started["features"])
    assert applied, f"{recipe.name}: no rung applied"
    # every ladder of the runbook was exercised or skipped by the policy for a stated reason
    walked = {lad for lad, _ in ladder_walk(rb)}
    assert walked <= {a.split("[")[0] for a in applied + skipped}
