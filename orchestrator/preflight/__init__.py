"""Before bed: ``hjepa-night preflight`` (and ``start --fit``).

- ``command``: the verb — runs the checks, probes the micro-batch and the step time with the
  real worker (``python -m trainer --probe``), plans the night and prints the table; ``--apply``
  writes the plan into a plan file or a state file.
- ``checks``: config, runbook, dataset and device (from the worker's ``--check`` document), disk,
  memory, and the timing verdict.
- ``table``: the printed plan (recipe / fits here / projected night, the probes behind it) and
  what each feature costs.
- ``features``: the per-feature probe's pure parts: which features to switch, the worker's
  answer as on/off step time and peak memory per feature, its fields in ``preflight.jsonl``.
- ``fit``: the pure arithmetic of a fitted night (micro-batch, accumulation, epochs that fit the
  window with the final-eval reserve and a margin) and its record (``preflight.jsonl``).
"""
