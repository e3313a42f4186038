"""``pdmtrack --help`` starts fast: parsing imports no torch (nor the models' libraries), and
``python -m pdmtrack.cli`` is the same command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

HEAVY = ("torch", "diffusers", "transformers", "numpy")
# Runs ``main`` with the given arguments in a fresh interpreter; prints the heavy modules it loaded.
SCRIPT = """
import sys
from pdmtrack.cli import main
sys.argv = ["pdmtrack", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print("loaded:", ",".join(name for name in {heavy} if name in sys.modules))
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)


@pytest.mark.parametrize("args", [["--help"], ["propagate", "--help"], ["eval", "davis", "--help"], ["segment-ov", "--help"]])
def test_help_imports_no_heavy_module(args: list[str]) -> None:
    result = _run("-c", SCRIPT.format(heavy=HEAVY), *args)
    assert result.returncode == 0, result.stderr
    assert "Usage: pdmtrack" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "loaded:", result.stdout
    if args[0] == "propagate":
        assert "--size" in result.stdout and "--cls" in result.stdout and "--support-seed" in result.stdout


def test_python_m_pdmtrack_cli_is_the_command() -> None:
    result = _run("-m", "pdmtrack.cli", "propagate", "--help")
    assert result.returncode == 0 and "Usage: python -m pdmtrack.cli propagate" in result.stdout


def test_import_pdmtrack_is_light_and_the_api_loads_on_use() -> None:
    script = "import sys, pdmtrack; assert 'torch' not in sys.modules; from pdmtrack import Tracker; assert 'torch' in sys.modules; print(Tracker.__name__)"
    result = _run("-c", script)
    assert result.returncode == 0 and result.stdout.strip() == "Tracker", result.stderr
