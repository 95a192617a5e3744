"""Training: the worker's loop and the objects it calls (state, step, step outcomes,
schedules, control channel, faults, health), and its other modes (``modes``).
"""
