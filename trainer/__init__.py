"""hjepa-night training worker: ``python -m trainer --config FILE --run-dir DIR``."""
