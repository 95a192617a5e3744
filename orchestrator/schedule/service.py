"""``hjepa-night service``: the plan's daemon as a per-user service, so a reboot, a logout or a
crash does not end the plan.

    hjepa-night service install --plan sequential [--state-dir var] [--now] [--no-enable]
    hjepa-night service uninstall [--state-dir var] [--no-enable]

``install`` writes a launchd agent (macOS: ``~/Library/LaunchAgents/<label>.plist``) or a
systemd user unit (Linux: ``$XDG_CONFIG_HOME/systemd/user/<name>.service``) that runs
:func:`daemon_command` — the very command ``start`` detaches — for that state dir, restarted
when it dies (launchd ``KeepAlive`` on a failed exit, systemd ``Restart=on-failure``, a minute
apart), logging to ``STATE_DIR/daemon.log``. A daemon that finds the plan finished exits 0 and
is left alone; one that finds the lock held by a running daemon exits 1 and tries again a
minute later, so it takes over when that one dies. Then it loads the service (``launchctl
bootstrap`` / ``systemctl --user enable --now``) unless ``--no-enable``, and prints the command
that keeps user services running without a login on Linux (``loginctl enable-linger``).
The names carry a hash of the state dir, so each state dir has its own service.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import plistlib
import shlex
import subprocess
import sys
from pathlib import Path

from orchestrator.schedule.plan import PROJECT_ROOT, PlanError, load_plan, resolve_plan_path

DETACHED_ENV = "HJEPA_NIGHT_DETACHED"
LOG_FILE = "daemon.log"
RESTART_S = 60


def daemon_command(plan_path: Path, state_dir: Path, now: bool) -> tuple[list[str], dict[str, str]]:
    """The daemon's argv and the environment it adds: what ``start`` detaches and what a
    service runs (one function, so the two cannot drift)."""
    cmd = [sys.executable, "-m", "orchestrator.cli", "start", "--plan", str(plan_path),
           "--state-dir", str(state_dir), "--foreground", "--no-tui"]  # fmt: skip
    if now:
        cmd.append("--now")
    env = {
        DETACHED_ENV: "1",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p
        ),
    }
    return cmd, env


def service_name(state_dir: Path) -> str:
    digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:8]
    return f"hjepa-night-{digest}"


def service_file(state_dir: Path, platform: str = sys.platform) -> Path:
    """Where the service for ``state_dir`` is written on this platform."""
    name = service_name(state_dir)
    if platform == "darwin":
        return Path.home() / "Library" / "LaunchAgents" / f"com.{name}.plist"
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "systemd" / "user" / f"{name}.service"


def launchd_plist(cmd: list[str], env: dict[str, str], state_dir: Path, cwd: Path) -> bytes:
    log = str(state_dir / LOG_FILE)
    return plistlib.dumps(
        {
            "Label": f"com.{service_name(state_dir)}",
            "ProgramArguments": cmd,
            "EnvironmentVariables": env,
            "WorkingDirectory": str(cwd),
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},  # restarted unless it exited 0
            "ThrottleInterval": RESTART_S,
            "StandardOutPath": log,
            "StandardErrorPath": log,
            "ProcessType": "Background",
        }
    )


def _systemd_quote(arg: str) -> str:
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def systemd_unit(cmd: list[str], env: dict[str, str], state_dir: Path, cwd: Path) -> str:
    log = state_dir / LOG_FILE
    lines = [
        "[Unit]",
        f"Description=hjepa-night daemon for {state_dir}",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={cwd}",
        *(f"Environment={_systemd_quote(f'{k}={v}')}" for k, v in env.items()),
        "ExecStart=" + " ".join(_systemd_quote(a) for a in cmd),
        "Restart=on-failure",
        f"RestartSec={RESTART_S}",
        "KillMode=mixed",  # SIGTERM to the daemon first: it stops the worker gracefully
        "TimeoutStopSec=180",
        f"StandardOutput=append:{log}",
        f"StandardError=append:{log}",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def enable_commands(path: Path, platform: str = sys.platform) -> list[list[str]]:
    if platform == "darwin":
        return [["launchctl", "bootstrap", f"gui/{os.getuid()}", str(path)]]
    return [["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "--now", path.name]]  # fmt: skip


def disable_commands(path: Path, platform: str = sys.platform) -> list[list[str]]:
    if platform == "darwin":
        return [["launchctl", "bootout", f"gui/{os.getuid()}", str(path)]]
    return [["systemctl", "--user", "disable", "--now", path.name]]


def installed(state_dir: Path, platform: str = sys.platform) -> Path | None:
    """The service file for ``state_dir`` when one is installed (``status`` says so)."""
    path = service_file(state_dir, platform)
    return path if path.is_file() else None


def _run_all(cmds: list[list[str]]) -> int:
    for c in cmds:
        print("$ " + shlex.join(c))
        try:
            r = subprocess.run(c, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"hjepa-night: {c[0]}: {exc}", file=sys.stderr)
            return 1
        if r.returncode != 0:
            print(f"hjepa-night: {shlex.join(c)} exited {r.returncode}: {r.stderr.strip()}",
                  file=sys.stderr)  # fmt: skip
            return 1
    return 0


def install(plan: str, state_dir: Path, now: bool, platform: str = sys.platform) -> Path:
    """Write the service file for ``plan`` on ``state_dir``; returns its path."""
    plan_path = resolve_plan_path(plan)
    load_plan(plan_path)  # PlanError on a bad plan, before anything is written
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    cmd, env = daemon_command(plan_path, state_dir, now)
    path = service_file(state_dir, platform)
    path.parent.mkdir(parents=True, exist_ok=True)
    if platform == "darwin":
        path.write_bytes(launchd_plist(cmd, env, state_dir, Path.cwd()))
    else:
        path.write_text(systemd_unit(cmd, env, state_dir, Path.cwd()))
    return path


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser("service", help="run the plan's daemon as a user service (reboots)")
    what = sp.add_subparsers(dest="action", required=True)
    ins = what.add_parser("install", help="write and load the service for a plan")
    ins.add_argument("--plan", required=True, help="plan name or file")
    ins.add_argument("--state-dir", default="var", help="state, runs and reports (var)")
    ins.add_argument("--now", action="store_true", help="night 1 now, not at its time")
    ins.add_argument("--no-enable", action="store_true", help="write the file only")
    un = what.add_parser("uninstall", help="unload and remove the service")
    un.add_argument("--state-dir", default="var", help="state, runs and reports (var)")
    un.add_argument("--no-enable", action="store_true", help="remove the file only")


def cmd_service(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    if args.action == "uninstall":
        path = installed(state_dir)
        if path is None:
            print(f"no service installed for {state_dir.resolve()}")
            return 0
        code = 0 if args.no_enable else _run_all(disable_commands(path))
        path.unlink()
        print(f"removed {path}")
        return code
    try:
        path = install(args.plan, state_dir, args.now)
    except (PlanError, OSError) as exc:
        print(f"hjepa-night: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    cmds = enable_commands(path)
    if args.no_enable:
        print("load it with: " + " && ".join(shlex.join(c) for c in cmds))
        return 0
    code = _run_all(cmds)
    if code == 0 and sys.platform != "darwin":
        user = os.environ.get("USER", "$USER")
        print(f"to keep it running while you are logged out: loginctl enable-linger {user}")
    return code
