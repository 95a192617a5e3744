"""hjepa-night's orchestrator: everything around the training worker (``trainer/``).

Read the rooms in the order a night goes through them:

- ``cli``: ``hjepa-night <verb>``; each verb lives in the room that does it.
- ``preflight``: before bed — the checklist, and the night planned from measurements.
- ``schedule``: ``start``/``stop``, the plan (which nights, which windows, night 2's gate), the
  daemon that runs them from the state file, its lock, and notifications.
- ``night``: one night — the runner (attempts, crash recovery, the ending), the supervisor of
  one worker process, and ``hjepa-night run``.
- ``policy``: every decision, pure — live and after an attempt (ladders, epoch cuts, deadline),
  recovery, the night's ending and what its record means, success, the next step, which
  runbook an unnamed recipe gets, the one cost model.
- ``views``: what a person reads — the status screen, the morning report, plots, and the
  snapshot of a state dir they share.
- ``core``: what every room shares — the state file (``state``), the seam to the worker's
  processes (``system``), the one fold of worker events (``fold``), runbooks, durations,
  shipped files, units.

From the worker the orchestrator imports only its contract: ``trainer.events`` and
``trainer.config``.
"""
