"""The one error type hvkit reports to users as a single line (exit code 2, no traceback)."""


class HvkitError(Exception):
    """A user-facing problem: bad recipe, unknown plugin, missing file, NaN loss …"""


class RecipeError(HvkitError):
    """A recipe problem, located by file and key path."""

    def __init__(self, message: str, file: str | None = None, path: str | None = None):
        self.file, self.path, self.reason = file, path, message
        where = ":".join(part for part in (file, path) if part)
        super().__init__(f"{where}: {message}" if where else message)
