"""Units the orchestrator counts in: one name each, the worker's where its contract has one."""

from trainer.events import GB as GB  # bytes in a GB: screens, reports, ceilings, preflight
