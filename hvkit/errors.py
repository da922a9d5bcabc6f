"""The errors hvkit reports to users, one line a problem, no traceback (exit code 2; an interrupted
run 128 + the signal's number)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


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


class Problems(HvkitError):
    """Several problems found at once (:func:`every`, a recipe's validation); it reads as all of them,
    one a line."""

    def __init__(self, errors: list[HvkitError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(error) for error in self.errors))


class RecipeErrors(Problems, RecipeError):
    """Every problem one validation found, in recipe order; its file, key path and reason are the first's."""

    def __init__(self, errors: list[RecipeError]):
        super().__init__(errors)
        self.file, self.path, self.reason = errors[0].file, errors[0].path, errors[0].reason


def every(items: Iterable[T], act: Callable[[T], object]) -> None:
    """``act`` on each item, going on past an :class:`HvkitError`; then the problems found are raised
    at once (:func:`raise_all`)."""
    found: list[HvkitError] = []
    for item in items:
        try:
            act(item)
        except HvkitError as exc:
            found.extend(problems(exc))
    raise_all(found)


def raise_all(found: list[HvkitError]) -> None:
    """Raise the problems ``found``, each distinct line once: one as itself, several as :class:`Problems`;
    nothing when there are none."""
    distinct: dict[str, HvkitError] = {}
    for problem in found:
        distinct.setdefault(str(problem), problem)
    if len(distinct) == 1:
        raise next(iter(distinct.values()))
    if distinct:
        raise Problems(list(distinct.values()))


def problems(error: HvkitError) -> list[HvkitError]:
    """The problems one error reports: each of a :class:`Problems`, else the error itself."""
    return list(error.errors) if isinstance(error, Problems) else [error]
