"""First-party transforms plugins."""
