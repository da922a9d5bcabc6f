"""First-party CLI commands, added to ``hvkit`` through the ``register_commands`` hook."""

from hvkit.api import hookimpl

from .compare import compare_command
from .curves import curves_command
from .embed import embed_command
from .errors import errors_command
from .eval_run import eval_command
from .explain import explain_command
from .index import index_command
from .new_plugin import new_plugin
from .sweep import sweep_command
from .verify import verify_command


@hookimpl
def register_commands(register):
    register(new_plugin)
    register(compare_command)
    register(curves_command)
    register(embed_command)
    register(errors_command)
    register(eval_command)
    register(explain_command)
    register(index_command)
    register(sweep_command)
    register(verify_command)
