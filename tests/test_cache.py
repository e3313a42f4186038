"""Feature cache: hits, misses on changed inputs, corruption recovery, resume, exact round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pdmtrack.features.cache as cache_module
from pdmtrack.errors import InputError
from pdmtrack.features.cache import (
    CachedFeatureSource,
    FeatureCache,
    default_cache_dir,
    frames_key,
)
from pdmtrack.features.types import PDMFeatures

GRID = (2, 3)


class CountingSource:
    """Stand-in extractor: deterministic tensors seeded by each frame's bytes; counts calls."""

    def __init__(self, with_classes: bool = True, fail_on_call: int | None = None) -> None:
        self.with_classes = with_classes
        self.fail_on_call = fail_on_call
        self.calls = 0

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("run killed")
        seeds = [int(frames_key(frame[None])[:12], 16) for frame in frames]
        per_frame = [torch.Generator().manual_seed(seed) for seed in seeds]
        appearance = torch.stack([torch.randn(4, *GRID, generator=g) for g in per_frame])
        semantic = torch.stack([torch.randn(3, *GRID, generator=g) for g in per_frame])
        if not self.with_classes:
            return PDMFeatures(appearance.half(), semantic.half())
        return PDMFeatures(
            appearance=appearance.half(),
            semantic=semantic.half(),
            class_vectors=torch.arange(6, dtype=torch.float16).reshape(2, 3),
            class_attention=torch.rand(len(frames), 2, *GRID, generator=per_frame[0]),
        )


def make_chunks(count: int, frames_per_chunk: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, size=(frames_per_chunk, 8, 10, 3), dtype=np.uint8)
        for _ in range(count)
    ]


def assert_same(a: PDMFeatures, b: PDMFeatures) -> None:
    for name in ("appearance", "semantic", "class_vectors", "class_attention"):
        left, right = getattr(a, name), getattr(b, name)
        if left is None or right is None:
            assert left is None and right is None, name
            continue
        assert left.dtype == right.dtype and left.shape == right.shape, name
        assert torch.equal(left, right), name


def cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("with_classes", [True, False])
def test_round_trip_is_exact(tmp_path: Path, with_classes: bool) -> None:
    frames = make_chunks(1)[0]
    features = CountingSource(with_classes)(frames)
    cache = FeatureCache(tmp_path, "fp-a")
    path = cache.put(frames, features)
    assert path.parent.parent == tmp_path / "fp-a"
    assert path.parent.name == path.stem[:2]
    loaded = cache.get(frames)
    assert loaded is not None
    assert_same(loaded, features)


def test_second_run_is_served_from_cache(tmp_path: Path) -> None:
    chunks = make_chunks(3)
    first_source = CountingSource()
    first = CachedFeatureSource(first_source, FeatureCache(tmp_path, "fp-a"))
    computed = [first(chunk) for chunk in chunks]
    assert (first.hits, first.misses, first_source.calls) == (0, 3, 3)

    second_source = CountingSource()
    second = CachedFeatureSource(second_source, FeatureCache(tmp_path, "fp-a"))
    served = [second(chunk) for chunk in chunks]
    assert (second.hits, second.misses, second_source.calls) == (3, 0, 0)
    for a, b in zip(computed, served):
        assert_same(a, b)


def test_changed_setting_is_a_miss(tmp_path: Path) -> None:
    frames = make_chunks(1)[0]
    FeatureCache(tmp_path, "fp-a").put(frames, CountingSource()(frames))
    assert FeatureCache(tmp_path, "fp-a").get(frames) is not None
    assert FeatureCache(tmp_path, "fp-b").get(frames) is None
    source = CountingSource()
    CachedFeatureSource(source, FeatureCache(tmp_path, "fp-b"))(frames)
    assert source.calls == 1


def test_changed_frame_bytes_are_a_miss(tmp_path: Path) -> None:
    frames = make_chunks(1)[0]
    cache = FeatureCache(tmp_path, "fp-a")
    cache.put(frames, CountingSource()(frames))
    edited = frames.copy()
    edited[1, 4, 5, 2] ^= 1
    assert cache.get(edited) is None
    assert cache.get(frames.copy()) is not None


def test_frames_key_covers_content_shape_and_dtype() -> None:
    frames = make_chunks(1)[0]
    strided = np.asfortranarray(frames)
    assert frames_key(strided) == frames_key(frames)
    assert frames_key(frames.reshape(2, 10, 8, 3)) != frames_key(frames)
    assert frames_key(frames.view(np.int8)) != frames_key(frames)


def truncate_in_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def truncate_in_tensor_data(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def corrupt_with_garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())


def corrupt_frame_count(path: Path) -> None:
    """A well-formed safetensors file whose content describes one frame, not two."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name)[:1].clone() for name in ("appearance", "semantic")}
    save_file(tensors, path, metadata=metadata)


@pytest.mark.parametrize(
    "corrupt",
    [truncate_in_header, truncate_in_tensor_data, corrupt_with_garbage, corrupt_frame_count],
)
def test_corrupt_file_is_removed_and_recomputed(tmp_path: Path, corrupt) -> None:
    frames = make_chunks(1)[0]
    cache = FeatureCache(tmp_path, "fp-a")
    path = cache.put(frames, CountingSource()(frames))
    corrupt(path)

    assert cache.get(frames) is None
    assert not path.exists()

    source = CountingSource()
    cached = CachedFeatureSource(source, cache)
    result = cached(frames)
    assert (source.calls, cached.misses) == (1, 1)
    reloaded = cache.get(frames)
    assert reloaded is not None
    assert_same(reloaded, result)


def test_killed_run_resumes_from_written_chunks(tmp_path: Path) -> None:
    chunks = make_chunks(5)
    killed = CachedFeatureSource(CountingSource(fail_on_call=3), FeatureCache(tmp_path, "fp-a"))
    with pytest.raises(KeyboardInterrupt):
        for chunk in chunks:
            killed(chunk)
    stored = cache_files(tmp_path)
    assert len(stored) == 2
    assert all(p.suffix == ".safetensors" and not p.name.startswith(".") for p in stored)

    source = CountingSource()
    resumed = CachedFeatureSource(source, FeatureCache(tmp_path, "fp-a"))
    for chunk in chunks:
        resumed(chunk)
    assert (resumed.hits, resumed.misses, source.calls) == (2, 3, 3)
    assert len(cache_files(tmp_path)) == 5


def test_write_killed_midway_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    frames = make_chunks(1)[0]
    cache = FeatureCache(tmp_path, "fp-a")

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(cache_module, "save_file", half_write)
    with pytest.raises(KeyboardInterrupt):
        cache.put(frames, CountingSource()(frames))
    assert cache_files(tmp_path) == []
    assert cache.get(frames) is None


def test_no_cache_passes_through(tmp_path: Path) -> None:
    frames = make_chunks(1)[0]
    source = CountingSource()
    direct = CachedFeatureSource(source, None)
    assert_same(direct(frames), direct(frames))
    assert (source.calls, direct.hits, direct.misses) == (2, 0, 2)


def test_unwritable_cache_dir_is_an_input_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    frames = make_chunks(1)[0]
    with pytest.raises(InputError, match="--cache-dir"):
        FeatureCache(not_a_dir, "fp-a").put(frames, CountingSource()(frames))


def test_unsafe_fingerprint_gets_a_hashed_folder(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "../model/at some path")
    frames = make_chunks(1)[0]
    path = cache.put(frames, CountingSource()(frames))
    assert path.resolve().is_relative_to(tmp_path.resolve())
    assert len(path.relative_to(tmp_path).parts) == 3


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PDMTRACK_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("PDMTRACK_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "pdmtrack" / "features"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pdmtrack" / "features"
    assert FeatureCache(None, "fp-a").cache_dir == default_cache_dir()
