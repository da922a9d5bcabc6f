"""First-party samplers plugins."""
