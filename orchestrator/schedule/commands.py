"""``hjepa-night start`` and ``hjepa-night stop``.

    hjepa-night start --plan sequential [--state-dir var] [--now] [--foreground] [--no-tui]
    hjepa-night stop [--state-dir var] [--timeout 120]

``start`` validates the plan and the state file, checks that every night can start (config,
device, data — downloading what ``download: true`` allows, ``readiness.py``; a night whose data
is missing and cannot be fetched refuses the plan unless its dataset fallback covers it), then
(unless ``--foreground``) re-runs itself
detached (its own session, through :class:`orchestrator.core.system.System`) with
``--foreground --no-tui``, logging to ``STATE_DIR/daemon.log``, and prints the pid, the log and
how to watch and stop it. In the foreground it takes the lock, creates or resumes the state,
wires the notifier and the status screen, and runs :class:`orchestrator.schedule.daemon.Daemon`.
``stop`` sends SIGTERM to the lock's owner (pid + create time) and waits for the lock to drop.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.core.lock import LOCK_FILE, DaemonLock, lock_owner
from orchestrator.core.state import ENDED, DaemonRecord, StateError, StateStore, now_iso
from orchestrator.core.system import System
from orchestrator.schedule.daemon import Daemon, NightFn
from orchestrator.schedule.plan import (
    Plan,
    PlanError,
    build_state,
    load_plan,
    local_now,
    resolve_plan_path,
)
from orchestrator.schedule.service import DETACHED_ENV, daemon_command

log = logging.getLogger("hjepa-night.daemon")

LOG_FILE = "daemon.log"


# ------------------------------------------------------------------------------------------
# commands
def _owner_text(state_dir: Path, owner: dict[str, Any]) -> str:
    pid = owner.get("pid") or "unknown"
    return (
        f"a daemon already owns {state_dir}: pid {pid}, since {owner.get('since', '?')}. "
        f"Watch it: hjepa-night status --state-dir {state_dir}; "
        f"stop it: hjepa-night stop --state-dir {state_dir}"
    )


def _check_state(store: StateStore, plan: Plan) -> str | None:
    """An error text if the state dir holds another or a finished plan; else None."""
    state = store.load()  # StateError on a corrupt or newer file (kept aside by the store)
    if state.plan is None:
        return None if not state.nights else f"{store.path} holds a `hjepa-night run` night"
    if state.plan.name != plan.name:
        return (
            f"{store.dir} holds plan {state.plan.name!r}, not {plan.name!r}; "
            "use another --state-dir, or move its state.json away"
        )
    if all(n.status in ENDED for n in state.nights):
        return (
            f"plan {plan.name!r} already finished in {store.dir} (report: hjepa-night report "
            f"--state-dir {store.dir}); use another --state-dir to run it again"
        )
    return None


def _finished(store: StateStore) -> bool:
    state = store.load()
    return state.plan is not None and all(n.status in ENDED for n in state.nights)


def _setup_logging(state_dir: Path, detached: bool, to_terminal: bool) -> Path:
    path = state_dir / LOG_FILE
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = (
        [logging.StreamHandler(sys.stdout)] if detached else [logging.FileHandler(path)]
    )
    if to_terminal and not detached:
        handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return path


def run_foreground(
    args: argparse.Namespace, plan: Plan, plan_path: Path, night_fn: NightFn | None = None
) -> int:
    state_dir = Path(args.state_dir).resolve()
    lock = DaemonLock(state_dir)
    if not lock.acquire():
        print(
            f"hjepa-night: {_owner_text(state_dir, lock_owner(state_dir) or {})}", file=sys.stderr
        )
        return 1
    try:
        detached = os.environ.get(DETACHED_ENV) == "1"
        tui = not args.no_tui and not detached and sys.stdout.isatty()
        log_path = _setup_logging(state_dir, detached, to_terminal=not tui)
        store = StateStore(state_dir)
        error = _check_state(store, plan)
        if error and detached and _finished(store):  # a service restarting it: nothing to do
            log.info("%s; the daemon exits", error)
            return 0
        if error:
            log.error(error)
            return 1
        if not store.exists() or store.load().plan is None:
            store.save(build_state(plan, plan_path, local_now(), args.now))
            log.info("plan %s started in %s", plan.name, state_dir)
        else:
            log.info("plan %s resumed from %s", plan.name, store.path)
        night_fn = night_fn or _run_night
        if plan.notify is not None:  # the notifier observes every state save of each night
            from orchestrator.schedule.notify import Notifier, with_notifier

            night_fn = with_notifier(night_fn, Notifier(plan.notify, state_dir))
        pid, create_time = System().me()
        record = DaemonRecord(
            pid=pid, create_time=create_time, started_at=now_iso(), log=str(log_path)
        )
        daemon = Daemon(store, plan, night_fn=night_fn, report_fn=_report_fn())
        if tui:
            threading.Thread(target=_run_tui, args=(state_dir,), daemon=True).start()
        return daemon.run(record)
    except StateError as exc:
        log.error("%s", exc)
        return 1
    finally:
        lock.release()


def _run_night(store: StateStore, index: int, **kw: Any) -> Any:
    from orchestrator.night.runner import run_night  # imported when a night starts (pulls in torch)

    return run_night(store, index, **kw)


def _report_fn() -> Callable[[Path], Any]:
    def write(state_dir: Path) -> Any:
        from orchestrator.views.report.write import write_report

        return write_report(state_dir)

    return write


def _run_tui(state_dir: Path) -> None:
    try:
        from orchestrator.views.screen.live import run_status

        run_status(state_dir, False)
    except Exception:
        log.error("status screen failed (the daemon goes on):\n%s", traceback.format_exc())


def _spawn(args: argparse.Namespace, plan_path: Path) -> int:
    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / LOG_FILE
    cmd, env = daemon_command(plan_path, state_dir, bool(args.now))  # what a service runs too
    offset = log_path.stat().st_size if log_path.exists() else 0
    sys_ = System()
    pid = sys_.spawn(cmd, os.getcwd(), log_path, env=env)  # its own session: survives the shell
    end = time.monotonic() + 60
    while time.monotonic() < end:
        exited, code = sys_.poll(pid)
        if exited:
            with log_path.open("rb") as fh:
                fh.seek(offset)
                print(fh.read().decode(errors="replace").rstrip(), file=sys.stderr)
            return code or 1
        owner = lock_owner(state_dir)
        if owner and owner.get("pid") == pid:
            break
        time.sleep(0.1)
    print(
        f"hjepa-night daemon started: pid {pid}\n"
        f"  log:   {log_path}\n"
        f"  watch: hjepa-night status --state-dir {args.state_dir}\n"
        f"  stop:  hjepa-night stop --state-dir {args.state_dir}"
    )
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    owner = lock_owner(state_dir)
    if owner is not None:
        print(f"hjepa-night: {_owner_text(state_dir, owner)}", file=sys.stderr)
        return 1
    try:
        plan_path = resolve_plan_path(args.plan)
        plan = load_plan(plan_path)
        error = _check_state(StateStore(state_dir), plan)
    except (PlanError, StateError) as exc:
        print(f"hjepa-night: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, PlanError) else 1
    detached = os.environ.get(DETACHED_ENV) == "1"
    if error:
        print(f"hjepa-night: {error}", file=sys.stderr)
        return 0 if detached and _finished(StateStore(state_dir)) else 1  # a service: done
    if not detached:  # the detached daemon was checked by its parent
        refused = _check_ready(plan, state_dir)
        if refused:
            print(f"hjepa-night: {refused}", file=sys.stderr)
            return 2
    if args.foreground:
        return run_foreground(args, plan, plan_path)
    return _spawn(args, plan_path)


def _check_ready(plan: Plan, state_dir: Path) -> str | None:
    """Every night's config, disk, device and data, downloads included, before the plan is
    accepted (``orchestrator.schedule.readiness``); the refusal text, or None."""
    from orchestrator.schedule.readiness import check_plan, refusal_text

    return refusal_text(check_plan(plan, state_dir=state_dir))


def cmd_stop(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    owner = lock_owner(state_dir)
    if owner is None:
        print(f"no daemon is running for {state_dir}")
        return 0
    pid = owner.get("pid")
    if not isinstance(pid, int) or not System().signal(
        pid, signal.SIGTERM, owner.get("create_time")
    ):
        print(
            f"hjepa-night: cannot tell which process owns {state_dir / LOCK_FILE}", file=sys.stderr
        )
        return 1
    print(
        f"asked daemon pid {pid} to stop; waiting up to {args.timeout:g}s "
        "(the worker checkpoints first)"
    )
    end = time.monotonic() + args.timeout
    while time.monotonic() < end and lock_owner(state_dir) is not None:
        time.sleep(0.2)
    if lock_owner(state_dir) is not None:
        print(
            f"hjepa-night: daemon pid {pid} still running after {args.timeout:g}s; "
            "wait, or run stop again",
            file=sys.stderr,
        )
        return 1
    try:
        state = StateStore(state_dir).load(set_aside=False)
    except StateError as exc:
        print(f"stopped; but the state file cannot be read: {exc}", file=sys.stderr)
        return 1
    for night in state.nights:
        print(f"  night {night.index + 1} {night.name}: {night.status}")
    print(
        f"stopped. Resume with: hjepa-night start --plan {state.plan.name if state.plan else '?'}"
        f" --state-dir {args.state_dir}"
    )
    return 0
