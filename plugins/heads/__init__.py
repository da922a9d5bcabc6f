"""First-party heads plugins."""
