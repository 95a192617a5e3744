"""``hjepa-night service``: the launchd agent and the systemd user unit it writes run the very
daemon command ``start`` detaches, restart it when it dies, and ``status`` says whether one is
installed. Nothing is loaded into a service manager here (``--no-enable``)."""

from __future__ import annotations

import argparse
import json
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.schedule import commands, service
from orchestrator.schedule.plan import resolve_plan_path
from tests.workerutil import env

DEMO_PLAN = resolve_plan_path("demo")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return h


def started_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list, dict]:
    """The argv and env ``start`` (detaching) hands to the OS, captured at the spawn."""
    seen: dict[str, Any] = {}

    def spawn(self: Any, cmd: list[str], cwd: str, log: Path, env: dict) -> int:
        seen.update(cmd=cmd, env=env)
        log.write_text("")
        return 999_999

    monkeypatch.setattr(commands.System, "spawn", spawn)
    monkeypatch.setattr(commands.System, "poll", lambda self, pid: (True, 1))
    args = argparse.Namespace(state_dir=str(tmp_path / "var"), now=False)
    commands._spawn(args, DEMO_PLAN)
    return seen["cmd"], seen["env"]


def test_systemd_unit_runs_the_start_daemon_and_restarts_it(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    var = tmp_path / "var"
    path = service.install("demo", var, now=False, platform="linux")
    assert path == home / ".config" / "systemd" / "user" / f"{service.service_name(var)}.service"
    unit = path.read_text()
    fields = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    cmd, env_add = started_command(tmp_path, monkeypatch)
    assert shlex.split(fields["ExecStart"]) == cmd
    envs = [shlex.split(line.split("=", 1)[1])[0] for line in unit.splitlines()
            if line.startswith("Environment=")]  # fmt: skip
    assert envs == [f"{k}={v}" for k, v in env_add.items()]
    assert fields["Restart"] == "on-failure" and fields["WantedBy"] == "default.target"
    assert fields["StandardOutput"] == f"append:{var.resolve() / 'daemon.log'}"
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax is not verified")
    # (--user needs a running user manager; the system mode checks the same syntax, keys and
    # that ExecStart is executable, and fails on an unknown key or a bad Restart= value)
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "HOME": str(home)})  # fmt: skip
    assert r.returncode == 0 and path.name not in r.stdout + r.stderr, r.stdout + r.stderr


def test_launchd_agent_parses_and_runs_the_start_daemon(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    var = tmp_path / "var"
    path = service.install("demo", var, now=False, platform="darwin")
    assert path.parent == home / "Library" / "LaunchAgents"
    agent = plistlib.loads(path.read_bytes())
    cmd, env_add = started_command(tmp_path, monkeypatch)
    assert agent["ProgramArguments"] == cmd and agent["EnvironmentVariables"] == env_add
    assert agent["KeepAlive"] == {"SuccessfulExit": False} and agent["RunAtLoad"] is True
    assert agent["Label"] == path.stem and agent["StandardErrorPath"].endswith("daemon.log")


@pytest.mark.slow
def test_install_status_uninstall_from_the_command_line(tmp_path: Path, home: Path) -> None:
    e = {**env(), "HOME": str(home)}
    e.pop("XDG_CONFIG_HOME", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=tmp_path,
                              env=e, capture_output=True, text=True, timeout=120)  # fmt: skip

    def status_service() -> str:
        r = cli("status", "--json", "--state-dir", "var")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["service"]

    assert status_service().startswith("none (to survive a reboot: hjepa-night service install")
    r = cli("service", "install", "--plan", "demo", "--state-dir", "var", "--no-enable")
    assert r.returncode == 0, r.stderr
    written = Path(r.stdout.split("wrote ", 1)[1].splitlines()[0])
    assert written.is_file() and str(written).startswith(str(home))
    assert "load it with: " in r.stdout
    assert status_service() == f"installed: {written}"
    (tmp_path / "var" / "runs" / "n1-demo" / "tensorboard").mkdir(parents=True)
    once = cli("status", "--once", "--state-dir", "var", "--width", "100")
    assert f"service: installed: {written}" in once.stdout, once.stdout + once.stderr
    assert "tensorboard: tensorboard --logdir var/runs/n1-demo/tensorboard" in once.stdout
    bad = cli("service", "install", "--plan", "no-such-plan", "--state-dir", "var", "--no-enable")
    assert bad.returncode == 2 and "no-such-plan" in bad.stderr
    r = cli("service", "uninstall", "--state-dir", "var", "--no-enable")
    assert r.returncode == 0 and not written.exists(), r.stderr
    assert status_service().startswith("none")


@pytest.mark.slow
def test_a_restarted_daemon_leaves_a_finished_plan_alone(tmp_path: Path) -> None:
    """What a service does after the plan's last night: exit 0, so it is not restarted."""
    from orchestrator.core.state import StateStore
    from orchestrator.schedule.plan import build_state, load_plan, local_now

    var = tmp_path / "var"
    state = build_state(load_plan(DEMO_PLAN), DEMO_PLAN, local_now(), True)
    for n in state.nights:
        n.start()
        n.end("succeeded", "done")
    StateStore(var).save(state)
    cmd, env_add = service.daemon_command(DEMO_PLAN, var, now=False)
    r = subprocess.run(cmd, cwd=tmp_path, env={**env(), **env_add}, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already finished" in r.stderr
