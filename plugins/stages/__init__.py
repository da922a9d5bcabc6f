"""First-party stages plugins."""
