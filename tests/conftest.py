"""Shared fixtures: the real DAVIS sample data beside the repo (skipped when absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Nothing may download at test time: every hub access fails fast instead.
os.environ["HF_HUB_OFFLINE"] = "1"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per xdist worker: several workers each spinning a full OpenMP team on a
    # small machine oversubscribe the cores and slow every tiny-model test many times over.
    import torch

    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
DAVIS_MINI = REPO_ROOT.parent / "shared" / "data" / "davis-mini"


@pytest.fixture(scope="session")
def davis_mini() -> Path:
    """Root of ../shared/data/davis-mini (DAVIS 2017 layout); skips the test when absent."""
    if not (DAVIS_MINI / "JPEGImages" / "480p").is_dir():
        pytest.skip("../shared/data/davis-mini is not present")
    return DAVIS_MINI


@pytest.fixture(autouse=True, scope="session")
def _private_feature_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the tests' feature cache out of the user's cache folder."""
    os.environ["PDMTRACK_CACHE_DIR"] = str(tmp_path_factory.mktemp("feature-cache"))


# what tests may add to the checkout: screenshots, pytest's cache, setuptools' folders (the wheel test)
CHECKOUT_OUTPUTS = {"test-artifacts", ".pytest_cache", "build", "pdmtrack.egg-info"}


@pytest.fixture(autouse=True)
def _checkout_untouched() -> Iterator[None]:
    """No test writes in the checkout (a relative path meant for the test's folder, a
    default ``-o`` resolved in the wrong place): its top level gains nothing."""
    before = set(os.listdir(REPO_ROOT))
    yield
    added = set(os.listdir(REPO_ROOT)) - before - CHECKOUT_OUTPUTS
    assert not added, f"the test wrote {sorted(added)} into the checkout {REPO_ROOT}"


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight SDXL-shaped diffusers folder, loaded like a user's --model PATH."""
    from pdmtrack.testing.diffusion import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sdxl"), family="sdxl")


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight SAM checkpoint, loaded like a user's --sam-checkpoint FILE."""
    from pdmtrack.testing.sam import build_tiny_sam

    return build_tiny_sam(tmp_path_factory.mktemp("tiny-sam") / "tiny_sam.safetensors")


@pytest.fixture(scope="session")
def tiny_sam2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight SAM 2 transformers folder, loaded like a user's --sam-checkpoint DIR."""
    from pdmtrack.testing.sam2 import build_tiny_sam2

    return build_tiny_sam2(tmp_path_factory.mktemp("tiny-sam2"))


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight DINOv2 folder, loaded like a user's --dinov2-model / --global-model PATH."""
    from pdmtrack.testing.dino import build_tiny_dinov2

    return build_tiny_dinov2(tmp_path_factory.mktemp("tiny-dinov2") / "dinov2")


@pytest.fixture(scope="session")
def tiny_dinov3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight DINOv3 ViT folder, loaded like a user's --dinov3-model PATH."""
    from pdmtrack.testing.dino import build_tiny_dinov3

    return build_tiny_dinov3(tmp_path_factory.mktemp("tiny-dinov3") / "dinov3")
