"""The one error tree: every error a command reports to a person derives from :class:`LogysteraError`.

Two branches, two exit codes (cli.md):

- :class:`UsageError` (exit 2): the user can fix it — a bad option, a rule or
  registry file with problems, an input file that stops a command, a missing
  secret or topic.
- :class:`Failure` (exit 1): the run could not complete — the store or the
  broker is down or kept failing.

``cli.main`` catches :class:`LogysteraError` once and prints
:meth:`LogysteraError.lines` (one line unless the error gathered several
problems, e.g. every problem of a rules directory), so a new command gets its
messages and exit codes without a ladder of ``except`` clauses of its own.
This is the ground floor: it imports nothing, so every package may raise these.
"""

from __future__ import annotations

from typing import TypeVar

EXIT_FAILED = 1
EXIT_USAGE = 2

E = TypeVar("E", bound=BaseException)


class LogysteraError(Exception):
    """An error a command reports as text and an exit code, never as a traceback."""

    exit_code = EXIT_FAILED

    def lines(self) -> list[str]:
        """What is printed on stderr, one item per line."""
        return [f"logystera: error: {self}"]


class UsageError(LogysteraError):
    """A mistake the user can fix (how a command was called, or a file it was given); exit 2."""

    exit_code = EXIT_USAGE


class Failure(LogysteraError):
    """The run could not complete (the store, the broker); exit 1."""

    exit_code = EXIT_FAILED


class Problems(UsageError):
    """Several problems found at once (every one of a file, say), each already a whole line; exit 2."""

    def __init__(self, problems: list[str], summary: str | None = None) -> None:
        super().__init__(summary or (problems[0] if len(problems) == 1 else f"{len(problems)} problems"))
        self.problems = problems

    def lines(self) -> list[str]:
        """The problems, each on its own line, as they were written."""
        return list(self.problems)


def root_cause(error: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` in ``error``'s chain (``__cause__``, else ``__context__``), if any.

    Bytewax re-raises a step's exception wrapped in its own; what the user must
    read is the store or the broker that gave up, somewhere inside.
    """
    seen: BaseException | None = error
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        if isinstance(seen, kind):
            return seen
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return None
