"""Checkpoints: the file store (``store``: atomic, verified, keep-last-k), loading
into a model whose features changed (``restore``), and what the worker saves and resumes
(``checkpointer``).
"""
