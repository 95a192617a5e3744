"""The status screen: ``live`` (``render``, ``run_status``) picks ``panels`` (the full layout)
or ``compact`` (one line per fact) by the terminal's size; ``levels`` colours the readings;
``wait`` is the pause between frames that Ctrl-C ends at once."""
