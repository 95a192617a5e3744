"""``hjepa-night status``: the live status screen, one frame, or the state as JSON.

    hjepa-night status [--state-dir var] [--once] [--json] [--width N]

``--json`` prints the state snapshot (``orchestrator/core/state.py`` documents every key: ``plan``,
``current_night``, ``next_start``, ``daemon``, ``nights``...) plus ``daemon_alive`` (whether
the daemon recorded in it still runs, from the lock) and ``service`` (whether a user service
restarts the daemon after a reboot, ``hjepa-night service``; ``--once`` prints it last, then
each night's TensorBoard folder). It reads the file only — it works with no daemon, during a
night and after a crash — and never moves a file aside. No state file yet: the empty state
(``nights: []``), exit 0. A file that cannot be read: a message, exit 1.
Otherwise it hands over to the status screen, ``orchestrator.views.screen.live.run_status``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.core.lock import lock_owner
from orchestrator.core.state import State, StateStore, read_snapshot

MIN_WIDTH, MAX_WIDTH = 20, 1000


def snapshot_json(state_dir: Path) -> str | None:
    """The ``--json`` text, or None when a state file exists but cannot be read."""
    store = StateStore(state_dir)
    state = read_snapshot(state_dir) if store.exists() else State()
    if state is None:
        return None
    data = state.model_dump(mode="json")
    owner = lock_owner(state_dir)
    data["daemon_alive"] = owner is not None
    data["service"] = service_text(state_dir)
    return json.dumps(data, indent=2)


def service_text(state_dir: Path) -> str:
    """Whether a service runs this state dir's daemon after a reboot (``service install``)."""
    from orchestrator.schedule.service import installed

    path = installed(state_dir)
    if path is None:
        return (
            "none (to survive a reboot: hjepa-night service install --plan NAME --state-dir "
            f"{state_dir})"
        )
    return f"installed: {path}"


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    width = getattr(args, "width", None)
    if width is not None and not MIN_WIDTH <= width <= MAX_WIDTH:
        print(
            f"hjepa-night status: --width {width}: give the screen's columns, "
            f"{MIN_WIDTH} to {MAX_WIDTH}",
            file=sys.stderr,
        )
        return 2
    if args.json:
        text = snapshot_json(state_dir)
        if text is None:
            print(
                f"hjepa-night: {state_dir / 'state.json'} cannot be read (corrupt, or from a "
                "newer version); `hjepa-night start` explains and keeps it aside",
                file=sys.stderr,
            )
            return 1
        print(text)
        return 0
    from orchestrator.views.screen.live import run_status

    code = int(run_status(state_dir, bool(args.once), getattr(args, "width", None)))
    if args.once:
        print(f"service: {service_text(state_dir)}")
        for tb in sorted((state_dir / "runs").glob("*/tensorboard")):  # logging.use_tensorboard
            print(f"tensorboard: tensorboard --logdir {tb}")
    return code
