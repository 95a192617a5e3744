"""hjepa-night orchestrator: CLI, daemon, plan/state, night runner, supervisor, policy, views."""
