"""First-party plugins, registered through the same `hvkit` entry-point group a third party uses."""
