"""First-party commands plugins."""
