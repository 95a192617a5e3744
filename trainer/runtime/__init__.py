"""Where the worker runs: device and precision, ranks (``dist``), host-to-device copies,
the allocator, the CPU thread governor (``cpu_threads``), the event emitter and its TensorBoard
sink, ``--check``.
"""
