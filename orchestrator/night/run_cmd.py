"""``hjepa-night run``: one supervised night in the foreground, then the morning report.

    hjepa-night run --config configs/demo_conservative.yaml --window 10m --state-dir var

It holds the daemon's lock on the state dir for its whole life, writes a one-night state file,
runs :func:`orchestrator.night.runner.run_night` with a live panel (a TTY) or one log line per
change, sends ``--notify`` notifications, and writes the report at the end.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from orchestrator.core.durations import parse_window
from orchestrator.core.runbook import (
    default_runbook_for,
    load_runbook,
)
from orchestrator.core.state import (
    RESUMABLE,
    Night,
    State,
    StateError,
    StateStore,
    now_iso,
    parse_iso,
)
from orchestrator.night.runner import run_night
from orchestrator.policy.runbooks import runbook_choice
from trainer.config import ConfigError, load_config


# ---------------------------------------------------------------------------------------------
# hjepa-night run
def new_single_night(
    config: str, runbook: str, window: timedelta, overrides: dict[str, Any]
) -> State:
    start = time.time()
    name = f"{Path(config).stem}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(start))}"
    night = Night(
        name=name,
        index=0,
        config=config,
        runbook=runbook,
        overrides=overrides,
        window_start=now_iso(start),
        deadline=now_iso(start + window.total_seconds()),
    )
    return State(plan=None, nights=[night])


class NightDisplay:
    """Foreground progress: a rich live panel on a TTY, else one log line per change."""

    def __init__(self, tui: bool) -> None:
        from rich.console import Console

        self.console = Console()
        self.tui = tui
        self._live: Any = None
        self._seen: tuple[int, int, int, int | None] = (0, 0, 0, None)

    def __enter__(self) -> NightDisplay:
        if self.tui:
            from rich.live import Live

            self._live = Live(console=self.console, refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, state: State) -> None:
        n = state.nights[0]
        if self._live is not None:
            self._live.update(self._panel(n))
            return
        seen = (len(n.attempts), len(n.decisions), len(n.fallbacks), n.epochs_done)
        if seen == self._seen:
            return
        if seen[0] > self._seen[0]:
            a = n.attempts[-1]
            self._log(f"attempt {a.index} started (resume: {a.resume_from or 'none'})")
        for d in n.decisions[self._seen[1] :]:
            self._log(f"decision {d.kind} [{d.trigger}]: {d.action}")
        if seen[3] != self._seen[3] and n.epochs_done is not None:
            fc = n.forecasts[-1].projected_finish if n.forecasts else "n/a"
            self._log(f"epoch {n.epochs_done}/{n.epochs_planned}, projected finish {fc}")
        self._seen = seen

    def _log(self, text: str) -> None:
        self.console.print(f"[{time.strftime('%H:%M:%S')}] {text}", highlight=False, markup=False)

    def _panel(self, n: Night) -> Any:
        from rich.table import Table

        t = Table(title=f"night {n.name} — {n.status}", show_header=False)
        a = n.attempts[-1] if n.attempts else None
        fc = n.forecasts[-1].projected_finish if n.forecasts else "N/A"
        rows = [
            ("deadline", n.deadline or "N/A"),
            (
                "attempt",
                f"{a.index} (resume {Path(a.resume_from).name if a.resume_from else '-'})"
                if a
                else "N/A",
            ),
            ("epochs", f"{n.epochs_done or 0}/{n.epochs_planned or '?'}"),
            ("projected finish", fc),
            ("overrides", ", ".join(f"{k}={v}" for k, v in n.overrides.items()) or "-"),
        ]
        rows += [
            (f"fallback {i + 1}", f"[{f.trigger}] {f.action}")
            for i, f in enumerate(n.fallbacks[-5:])
        ]
        for key, value in rows:
            t.add_row(key, str(value))
        return t


def observers(display: NightDisplay, args: Any, store: StateStore) -> Callable[[State], None]:
    """What watches each state save of a ``run``: the display, and the ``--notify`` command."""
    if not getattr(args, "notify", None):
        return display.update
    from orchestrator.schedule.notify import Notifier, NotifySpec

    notifier = Notifier(NotifySpec(command=args.notify), store.dir)

    def both(state: State) -> None:
        display.update(state)
        notifier(state)

    return both


def refuse_over(
    old: State, store: StateStore, config: str, overrides: dict[str, Any], state_dir: str
) -> str | None:
    """Why ``run --config CONFIG`` may not use a state dir holding ``old`` (None: it may).
    A state dir never loses a night's record: an empty one gets a new night, an unfinished
    single night of the same config is resumed (any ``--set`` must agree with its overrides),
    and everything else is refused, naming what holds the dir."""
    if not old.nights:
        return None
    if old.plan is not None:
        busy = [x for x in old.nights if x.status in RESUMABLE]
        if busy:
            return (
                f"{store.path} holds plan {old.plan.name!r} mid-way (night {busy[0].name} is "
                f"{busy[0].status}); finish it with `hjepa-night start --plan "
                f"{old.plan.name} --state-dir {state_dir}` or use another --state-dir"
            )
        return (
            f"{store.path} holds the finished plan {old.plan.name!r}; its record stays: use "
            "another --state-dir for this night"
        )
    n = old.nights[0]
    if n.status not in RESUMABLE:
        return (
            f"{store.path} holds the finished night {n.name} ({n.status}); its record and "
            f"report stay: use another --state-dir for a new night"
        )
    again = f"hjepa-night run --config {n.config} --state-dir {state_dir}"
    if not _same_file(n.config, config):
        return (
            f"{store.path} holds the unfinished night {n.name} of {n.config}; resume it with "
            f"`{again}` or use another --state-dir"
        )
    base = n.attempts[0].overrides if n.attempts else n.overrides  # before any fallback
    differ = [k for k, v in overrides.items() if k not in base or base[k] != v]
    if differ:
        return (
            f"{store.path} holds the unfinished night {n.name} with other overrides "
            f"({', '.join(differ)}); resume it as it was with `{again}` or use another --state-dir"
        )
    return None


def _same_file(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def cmd_run(args: Any) -> int:
    """``hjepa-night run``: one night in the foreground, then the morning report.

    It takes the daemon's lock on the state dir (``STATE_DIR/daemon.lock``) for its whole life:
    a second ``run`` or a ``start`` on the same state dir is refused, naming the owner, instead
    of two runners overwriting one state file."""
    from orchestrator.core.lock import DaemonLock, lock_owner

    state_dir = Path(args.state_dir)
    lock = DaemonLock(state_dir)
    if not lock.acquire():
        owner = lock_owner(state_dir) or {}
        print(
            f"error: {state_dir} is in use by hjepa-night pid {owner.get('pid') or '?'} "
            f"(since {owner.get('since', '?')}); watch it with `hjepa-night status "
            f"--state-dir {state_dir}`, or use another --state-dir",
            file=sys.stderr,
        )
        return 2
    try:
        return _run_locked(args)
    finally:
        lock.release()


def _run_locked(args: Any) -> int:
    store = StateStore(args.state_dir)
    try:
        window = timedelta(seconds=parse_window(args.window))
    except ValueError as exc:
        print(f"error: --window {exc}", file=sys.stderr)
        return 2
    try:
        load_config(args.config, list(args.overrides))
        runbook = args.runbook or str(default_runbook_for(args.config))
        load_runbook(runbook)
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from orchestrator.schedule.readiness import check_night  # device and data, downloads

    ready = check_night(
        0,
        Path(args.config).stem,
        Path(args.config),
        Path(runbook),
        args.overrides,
        Path(args.state_dir),
    )
    from orchestrator.core.awake import power_warnings

    chosen = [] if args.runbook else [runbook_choice(args.config)]
    lines = chosen + ready.lines + [f"warning: {w}" for w in power_warnings()]
    print("\n".join(lines), file=sys.stderr)
    if ready.refusal:
        print(f"error: {ready.refusal}", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {}
    from trainer.config import parse_override

    for item in args.overrides:
        path, value = parse_override(item)
        overrides[".".join(path)] = value
    try:
        old = store.load()
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    refusal = refuse_over(old, store, args.config, overrides, str(args.state_dir))
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    if old.nights:  # the same night, stopped or interrupted: resume it
        state = old
        n = state.nights[0]
        deadline = parse_iso(n.deadline) if n.deadline else None
        if deadline is None or deadline.timestamp() <= time.time():
            n.deadline = now_iso(time.time() + window.total_seconds())
        print(f"resuming night {n.name} ({len(n.attempts)} attempt(s) so far, "
              f"deadline {n.deadline})")  # fmt: skip
    else:
        state = new_single_night(args.config, runbook, window, overrides)
    store.save(state)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    display = NightDisplay(tui=not args.no_tui and sys.stdout.isatty())
    try:
        with display:
            night = run_night(store, 0, stop=stop, on_update=observers(display, args, store))
    finally:
        signal.signal(signal.SIGINT, previous)
    if night.status in ("running", "stopped"):
        print(
            f"stopped; the night is resumable (state in {store.path}): run the same command "
            "again to resume it"
        )
        return 130
    try:
        from orchestrator.views.report.write import write_report

        report = write_report(store.dir, night=None)
        print(f"morning report: {report}")
    except Exception as exc:  # the night's result stands even if the report fails
        print(f"warning: report not written: {exc}", file=sys.stderr)
    print(f"night {night.name}: {night.status} — {night.reason}")
    return 0 if night.status in ("succeeded", "partial") else 1
