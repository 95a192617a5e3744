"""The live status screen: ``hjepa-night status [--state-dir var] [--once] [--width N]``.

    run_status(Path("var"), once=False)   # rich Live, one frame a second, Ctrl-C to leave at once
    console.print(render(SnapshotSource(Path("var")).take(), size=(80, 24)))

``render`` draws one immutable :class:`~orchestrator.views.snapshot.Snapshot` (gathered off the draw
path) and answers "is it OK, and will it finish by morning?": plan and nights, the current
attempt and its overrides, progress with the forecast finish against the deadline, loss
sparklines (total and per level), throughput, memory coloured by the runbook thresholds, the
last evaluation, and the fallbacks newest first. Any missing reading renders as "N/A". The
terminal's size picks the layout: the full panels (``panels``) or, below ``COMPACT_BELOW``, one
line per fact (``compact``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console, RenderableType

from orchestrator.views.screen.compact import render_compact
from orchestrator.views.screen.panels import render_full
from orchestrator.views.screen.wait import FrameWait
from orchestrator.views.snapshot import Snapshot, SnapshotSource

COMPACT_BELOW = (110, 40)  # width, height: smaller terminals get the compact layout


def render(snapshot: Snapshot, size: tuple[int, int] | None = None) -> RenderableType:
    """One frame for one snapshot (pure; never raises on missing data). ``size`` (columns,
    rows) picks the layout: below ``COMPACT_BELOW`` in either, :func:`render_compact`;
    None or larger, the full panels."""
    if size is not None and (size[0] < COMPACT_BELOW[0] or size[1] < COMPACT_BELOW[1]):
        return render_compact(snapshot, size[0], size[1])
    return render_full(snapshot)


PLAIN_EVERY_S = 15.0  # the plain frames' period
LIVE_EVERY_S = 1.0  # the live screen's period


def _plain(source: SnapshotSource, console: Console, size: Callable[[], tuple[int, int]]) -> int:
    """A terminal rich cannot drive (TERM=dumb, a pipe, a log file): one plain frame every
    ``PLAIN_EVERY_S`` seconds, printed one after the other, until Ctrl-C."""
    try:
        with FrameWait() as wait:
            while True:
                console.print(render(source.take(), size()))
                console.file.flush()
                if wait(PLAIN_EVERY_S):
                    return 0
    except KeyboardInterrupt:
        return 0


def run_status(state_dir: Path, once: bool, width: int | None = None) -> int:
    """Show the status screen for ``state_dir``: one frame with ``once``, else live until Ctrl-C.

    The layout follows the terminal's size on every frame (resize live); ``width`` forces the
    columns (``--width``). Exit 0 (also on Ctrl-C); 1 with ``once`` when there is no readable
    state file."""
    source = SnapshotSource(Path(state_dir))
    console = Console(width=width) if width else Console()

    def size() -> tuple[int, int]:
        return (width or console.size.width, console.size.height)

    if once:
        snap = source.take()
        console.print(render(snap, size()))
        return 1 if snap.state is None else 0
    if not console.is_terminal or console.is_dumb_terminal:
        return _plain(source, console, size)
    from rich.live import Live

    # Each frame is drawn by this loop (no refresh thread): Ctrl-C interrupts the one thread
    # that builds and draws, and leaving never waits for a frame drawn elsewhere.
    try:
        with (
            FrameWait() as wait,
            Live(
                render(source.take(), size()),
                console=console,
                auto_refresh=False,
                screen=console.is_terminal,
                redirect_stderr=False,
            ) as live,
        ):
            while not wait(LIVE_EVERY_S):
                live.update(render(source.take(), size()), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0
