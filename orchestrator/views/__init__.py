"""What a person reads: the live status screen, the morning report and its plots.

``snapshot`` takes immutable snapshots of a state dir (state file, each attempt's events through
:mod:`orchestrator.core.fold`, the runbook's thresholds, the forecast); the screen and the
report render them. The views only read: they never write the state or signal a process, and
work with no daemon, during a night and after a crash.

- ``fmt``: text formatters shared by the screen and the report (a missing reading is "N/A");
- ``status``: ``hjepa-night status`` (the live screen, one frame, or the state as JSON);
- ``screen/``: the status screen: ``live`` (layout choice, refresh loop), ``panels`` (the full
  layout), ``compact`` (small terminals), ``levels`` (colours from the runbook thresholds);
- ``report/``: the morning report: ``facts`` (gathered per night), ``advice`` (verdict and next
  step in words), ``sections`` (Markdown per night), ``markdown`` (tables, ``--set`` args),
  ``write`` (the file and ``hjepa-night report``);
- ``plots``: the report's PNGs.
"""
