"""Evaluation of the frozen encoder: the metrics (``metrics``: kNN, linear probe, collapse
checks), the linear probe itself (``linear_probe``), the report pictures (``pictures``) and the
worker's eval phase (``evaluator``).
"""
