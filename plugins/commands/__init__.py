"""First-party CLI commands, added to ``hvkit`` through the ``register_commands`` hook."""

from hvkit.api import hookimpl

from .new_plugin import new_plugin


@hookimpl
def register_commands(register):
    register(new_plugin)
