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


class ParameterError(InputError):
    """A bad value of the library parameter ``name`` (``Tracker(size=...)``,
    ``propagate(start=...)``, ``plan_video_run(classes=...)``); the CLI shows it under the
    flag that sets that parameter (``--size``, ``--start``, ``--cls``)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(name, problem)
        self.parameter = name
