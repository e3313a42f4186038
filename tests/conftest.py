"""Shared fixtures: the real DAVIS sample data beside the repo (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DAVIS_MINI = REPO_ROOT.parent / "shared" / "data" / "davis-mini"


@pytest.fixture(scope="session")
def davis_mini() -> Path:
    """Root of ../shared/data/davis-mini (DAVIS 2017 layout); skips the test when absent."""
    if not (DAVIS_MINI / "JPEGImages" / "480p").is_dir():
        pytest.skip("../shared/data/davis-mini is not present")
    return DAVIS_MINI
