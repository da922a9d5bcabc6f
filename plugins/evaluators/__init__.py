"""First-party evaluators plugins."""
