"""First-party miners plugins."""
