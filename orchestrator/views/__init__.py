"""What a person reads: the live status screen, the morning report and its plots.

``snapshot`` takes immutable snapshots of a state dir (state file, each attempt's events through
:mod:`orchestrator.core.fold`, the runbook's thresholds, the forecast); the screen and the
report render them.
"""
