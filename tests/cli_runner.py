"""Run the ``pdmtrack`` entry point in-process, as a user's shell would, and capture it."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from pdmtrack.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(args: Sequence[object], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> CliResult:
    """Call ``pdmtrack ARGS`` through :func:`pdmtrack.cli.main` and return its exit code and output."""
    monkeypatch.setattr(sys, "argv", ["pdmtrack", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    code = exit_info.value.code
    return CliResult(code=0 if code is None else int(code), out=captured.out, err=captured.err)


def assert_one_line_error(result: CliResult, *fragments: str) -> None:
    """Exit code 2, no traceback, and one stderr line that contains every fragment."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
