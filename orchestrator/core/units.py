"""Units the orchestrator counts in: one name each."""

GB = 1024**3  # bytes in a GB as every screen, report, ceiling and preflight table counts it
