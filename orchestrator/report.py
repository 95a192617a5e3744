"""Old import path of the morning report, now :mod:`orchestrator.views.report.write`.

Kept only for ``orchestrator/night/run_cmd.py`` and ``orchestrator/schedule/commands.py``,
which import ``write_report`` from here; remove this file once they import from
``orchestrator.views.report.write``.
"""

from orchestrator.views.report.write import write_report

__all__ = ["write_report"]
