"""One night, from its spec in the state file to a judged, evaluated model.

- ``runner``: the main loop (:func:`runner.run_night`): launch an attempt, let the policy decide
  after it ends, launch the next, until the night ends.
- ``attempts``: the runner's base — recording decisions before they act, launching one attempt.
- ``supervisor``: one worker process, watched live (events, heartbeats, memory) and stopped.
- ``recovery``: an attempt whose supervisor died (re-attach, or stop and record it).
- ``ending``: best checkpoint, final metrics, verdict, status.
- ``history``: the night read back from the state file, as the policy needs it.
- ``run_cmd``: ``hjepa-night run``, one night in the foreground.
"""
