"""Which nights run when: ``hjepa-night start``/``stop``, the plan, and the daemon.

- ``plan``: a plan file → the nights of the state file (windows, deadlines), reconciling windows
  that passed while nothing ran, and night N's gate once night N−1 ended.
- ``daemon``: the loop that runs the plan's nights from the state file, one at a time.
- ``commands``: the ``start``/``stop`` verbs.
- ``notify``: a command run for each fallback and each night's end.
"""
