"""First-party losses plugins."""
