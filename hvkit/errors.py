"""The errors hvkit reports to users, one line a problem, no traceback (exit code 2; an interrupted
run 128 + the signal's number)."""


class HvkitError(Exception):
    """A user-facing problem: bad recipe, unknown plugin, missing file, NaN loss …"""


class Interrupted(HvkitError):
    """A run stopped by a signal, with what is kept and how to continue; exit code 128 + the signal's."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class RecipeError(HvkitError):
    """A recipe problem, located by file and key path."""

    def __init__(self, message: str, file: str | None = None, path: str | None = None):
        self.file, self.path, self.reason = file, path, message
        where = ":".join(part for part in (file, path) if part)
        super().__init__(f"{where}: {message}" if where else message)


class RecipeErrors(RecipeError):
    """Every problem one validation found, in recipe order; it reads as the first, printed one line each."""

    def __init__(self, errors: list[RecipeError]):
        first = errors[0]
        super().__init__(first.reason, first.file, first.path)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


def problems(error: HvkitError) -> list[HvkitError]:
    """The problems one error reports: each of a :class:`RecipeErrors`, else the error itself."""
    return list(getattr(error, "errors", [error]))
