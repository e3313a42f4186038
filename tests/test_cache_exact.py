"""The feature cache never changes masks: all-fresh, all-cached and mixed runs write the same
PNGs (tiny random-weight model, SAM off, a folder of frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdmtrack.config import FeatureConfig, RuntimeConfig, SamConfig, TrackSettings
from pdmtrack.runs.video_folder import plan_video, track_to_folder
from pdmtrack.tracking.tracker import Tracker

HEIGHT, WIDTH, FRAMES = 48, 64, 6


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("clip")
    frames_dir = root / "frames"
    frames_dir.mkdir()
    rng = np.random.default_rng(3)
    for t in range(FRAMES):
        frame = rng.integers(60, 140, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        frame[8:30, 4 + 3 * t : 24 + 3 * t] = (230, 50, 40)
        Image.fromarray(frame).save(frames_dir / f"{t:05d}.png")
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    labels[8:30, 4:24] = 1
    labels[34:44, 40:60] = 2
    Image.fromarray(labels).save(root / "mask.png")
    return frames_dir, root / "mask.png"


def run(clip, tiny_sdxl: Path, out: Path, cache: Path | None) -> list[np.ndarray]:
    frames_dir, mask = clip
    settings = TrackSettings(
        features=FeatureConfig(model=str(tiny_sdxl), size=64, inversion="noise"),
        sam=SamConfig(model_type="none"),
        runtime=RuntimeConfig(device="cpu", batch_size=4, cache_dir=cache, use_cache=cache is not None),
    )
    track_to_folder(Tracker(settings), plan_video(frames_dir, out, masks={0: mask}, classes=["car"], overlay=False))
    return [np.asarray(Image.open(p)) for p in sorted(out.glob("0*.png"))]


def test_fresh_cached_and_mixed_runs_write_identical_masks(clip, tiny_sdxl: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fresh = run(clip, tiny_sdxl, tmp_path / "fresh", None)
    first = run(clip, tiny_sdxl, tmp_path / "first", cache)
    cached = run(clip, tiny_sdxl, tmp_path / "cached", cache)
    entries = sorted(cache.rglob("*.safetensors"))
    assert len(entries) == FRAMES
    for entry in entries[::3]:
        entry.unlink()
    mixed = run(clip, tiny_sdxl, tmp_path / "mixed", cache)
    assert len(fresh) == FRAMES
    for a, b, c, d in zip(fresh, first, cached, mixed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(a, d)
