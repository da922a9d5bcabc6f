"""First-party datasets plugins."""
