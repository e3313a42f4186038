"""benchmarks/soak.py stays runnable: one run (killed unless it beats its random deadline)
and a final run; the full soak (200 runs) is run by hand: `python benchmarks/soak.py`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


@pytest.mark.slow
def test_soak_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    assert soak.main(["--runs", "1", "--kill-share", "1", "--work", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "0  temporaries after the final run" in printed and "differs" not in printed
