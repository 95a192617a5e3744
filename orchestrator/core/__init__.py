"""What every room of the orchestrator shares.

- ``state``: the state file (``STATE_DIR/state.json``), written atomically; every night's status
  change goes through ``Night.start`` / ``Night.end``.
- ``system``: the seam to the worker's processes — spawn, signal, liveness (pid + create
  time), the TERM → KILL escalation of a process group, memory sampling, clocks. One-shot
  commands outside a night's supervision (notify, service, join, preflight, awake) call the OS
  directly.
- ``units``: ``GB``.
- ``fold``: the one fold of a worker's ``events.jsonl`` into facts (:class:`fold.RunView`).
- ``runbook``: fallback ladders, thresholds and success criteria, loaded and validated.
- ``lock``: one owner per state dir (the daemon, or ``hjepa-night run``), readable by all.
- ``durations``, ``datafiles``: ``8h``/``90m``; where shipped configs, plans and runbooks are.
"""
