"""The one error type for user mistakes: the CLI prints it as one line and exits with 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A problem with something the user gave (a file, a flag, a folder).

    ``str(err)`` is one line naming the offending file (or flag) and the problem.
    """

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
