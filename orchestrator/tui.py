"""Old import path of the status screen, now :mod:`orchestrator.views.screen.live`.

Kept only for ``orchestrator/schedule/commands.py``, which imports ``run_status`` from here;
remove this file once it imports from ``orchestrator.views.screen.live``.
"""

from orchestrator.views.screen.live import run_status

__all__ = ["run_status"]
