"""Feature cache: per-frame keys, checksums, exactness, the size bound, sharing, info/clear."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pdmtrack.features.cache as cache_module
import pdmtrack.features.cache_folder as folder_module
from pdmtrack.errors import InputError
from pdmtrack.features.cache import CachedFeatureSource, FeatureCache, frames_key, tensors_checksum
from pdmtrack.features.cache_folder import CacheFolder, default_cache_dir, resolve_max_bytes
from pdmtrack.features.types import PDMFeatures
from tests.cli_runner import assert_one_line_error, run_cli

GRID = (2, 3)
REPO = Path(__file__).resolve().parents[1]


class CountingSource:
    """Stand-in extractor: per-frame tensors seeded by each frame's bytes, returned as a
    non-contiguous (transposed) view like the real extractor's; ``batch_noise`` adds one
    float16 ulp that depends on the batch, like real kernels do. Counts frames computed."""

    def __init__(self, with_classes: bool = True, fail_on_call: int | None = None, batch_noise: bool = False) -> None:
        self.with_classes = with_classes
        self.fail_on_call = fail_on_call
        self.batch_noise = batch_noise
        self.calls = 0
        self.frames = 0

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        self.calls += 1
        self.frames += len(frames)
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("run killed")
        per_frame = [torch.Generator().manual_seed(int(frames_key(frame)[:12], 16)) for frame in frames]
        appearance = torch.stack([torch.randn(*GRID, 4, generator=g) for g in per_frame]).half()
        if self.batch_noise:
            appearance = appearance + appearance * (len(frames) * 2**-10)
        semantic = torch.stack([torch.randn(*GRID, 3, generator=g) for g in per_frame]).half()
        features = PDMFeatures(appearance.permute(0, 3, 1, 2), semantic.permute(0, 3, 1, 2))
        if self.with_classes:
            features.class_vectors = torch.arange(6, dtype=torch.float16).reshape(2, 3)
            features.class_attention = torch.stack([torch.rand(2, *GRID, generator=g) for g in per_frame]).half()
            features.appearance_parts = torch.stack([features.appearance, -features.appearance], dim=1)
        return features


def make_frames(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 8, 10, 3), dtype=np.uint8)


def assert_same(a: PDMFeatures, b: PDMFeatures) -> None:
    for name in ("appearance", "semantic", "class_vectors", "class_attention", "appearance_parts"):
        left, right = getattr(a, name), getattr(b, name)
        if left is None or right is None:
            assert left is None and right is None, name
            continue
        assert left.dtype == right.dtype and left.shape == right.shape, name
        assert left.stride() == right.stride(), name
        assert torch.equal(left, right), name


def entry_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.safetensors") if not p.name.startswith("."))


def new_cache(root: Path, fingerprint: str = "fp-a", **options) -> FeatureCache:
    return FeatureCache(root, fingerprint, description={"model": "tiny", "classes": ["dog"]}, **options)


# -- keys, layout, round trip ------------------------------------------------------------


@pytest.mark.parametrize("with_classes", [True, False])
def test_round_trip_is_exact_and_one_entry_per_frame(tmp_path: Path, with_classes: bool) -> None:
    frames = make_frames(3)
    features = CountingSource(with_classes)(frames).contiguous()
    cache = new_cache(tmp_path)
    assert cache.put(frames, features) == 3
    files = entry_files(tmp_path)
    assert len(files) == 3 and all(f.parent.parent == tmp_path / "fp-a" for f in files)
    assert all(f.parent.name == f.stem[:2] for f in files)
    for index, frame in enumerate(frames):
        loaded = cache.get(frame)
        assert loaded is not None
        assert_same(loaded, features.select(index).contiguous())
    description = json.loads((tmp_path / "fp-a" / "info.json").read_text())
    assert description["model"] == "tiny" and description["fingerprint"] == "fp-a"


def test_hits_are_per_frame_across_batch_sizes_and_starts(tmp_path: Path) -> None:
    frames = make_frames(12)
    first = CachedFeatureSource(CountingSource(), new_cache(tmp_path))
    computed = PDMFeatures.cat([first(frames[i : i + 4]) for i in range(0, 12, 4)])
    assert (first.hits, first.misses) == (0, 12)

    for batch, start in ((3, 0), (5, 2), (1, 7)):
        source = CountingSource()
        again = CachedFeatureSource(source, new_cache(tmp_path))
        for i in range(start, 12, batch):
            served = again(frames[i : i + batch])
            assert_same(served, computed.select(slice(i, i + batch)).contiguous())
        assert source.calls == 0 and again.misses == 0 and again.hits == 12 - start
    # the same frame in another "video" (another batch neighbourhood) is a hit too
    other_video = np.concatenate([make_frames(2, seed=9), frames[5:6]])
    source = CountingSource()
    CachedFeatureSource(source, new_cache(tmp_path))(other_video[2:])
    assert source.calls == 0


def test_changed_setting_or_frame_is_a_miss(tmp_path: Path) -> None:
    frames = make_frames(1)
    new_cache(tmp_path).put(frames, CountingSource()(frames))
    assert new_cache(tmp_path).get(frames[0]) is not None
    assert new_cache(tmp_path, "fp-b").get(frames[0]) is None
    edited = frames[0].copy()
    edited[4, 5, 2] ^= 1
    assert new_cache(tmp_path).get(edited) is None


def test_frames_key_covers_content_shape_and_dtype() -> None:
    frame = make_frames(1)[0]
    assert frames_key(np.asfortranarray(frame)) == frames_key(frame)
    assert frames_key(frame.reshape(10, 8, 3)) != frames_key(frame)
    assert frames_key(frame.view(np.int8)) != frames_key(frame)


def test_unsafe_fingerprint_gets_a_hashed_folder(tmp_path: Path) -> None:
    frames = make_frames(1)
    cache = new_cache(tmp_path, "../model/at some path")
    cache.put(frames, CountingSource()(frames))
    (path,) = entry_files(tmp_path)
    assert path.resolve().is_relative_to(tmp_path.resolve())
    assert len(path.relative_to(tmp_path).parts) == 3


def test_fingerprint_naming_a_cache_folder_gets_a_hashed_folder(tmp_path: Path) -> None:
    frames = make_frames(1)
    for fingerprint in ("tmp", "sam"):
        cache = new_cache(tmp_path, fingerprint)
        assert cache.put(frames, CountingSource()(frames)) == 1 and cache.get(frames[0]) is not None
        assert cache.group not in ("tmp", "sam")


# -- integrity ---------------------------------------------------------------------------


def flip_tensor_byte(path: Path) -> None:
    """Damage the tensor data only: the header (and its metadata) stay intact."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))


def truncate_in_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def truncate_in_tensor_data(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())


def consistent_but_wrong_shape(path: Path) -> None:
    """A well-formed entry with a valid checksum whose tensors are not one frame's."""
    from safetensors.torch import load, save

    tensors = load(path.read_bytes())
    metadata = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])["__metadata__"]
    tensors = {"appearance": tensors["appearance"].repeat(2, 1, 1, 1), "semantic": tensors["semantic"].repeat(2, 1, 1, 1)}
    path.write_bytes(save(tensors, metadata={**metadata, "checksum": tensors_checksum(tensors)}))


@pytest.mark.parametrize("damage", [flip_tensor_byte, truncate_in_header, truncate_in_tensor_data, garbage, consistent_but_wrong_shape])
def test_damaged_entry_is_discarded_and_recomputed(tmp_path: Path, damage, caplog) -> None:
    frames = make_frames(2)
    cache = new_cache(tmp_path)
    original = CachedFeatureSource(CountingSource(), cache)(frames)
    damaged = entry_files(tmp_path)[0]
    damage(damaged)

    with caplog.at_level(logging.WARNING):
        source = CountingSource()
        served = CachedFeatureSource(source, cache)(frames)
    assert source.frames == 2, "a damaged entry must not be served"
    assert "discarding damaged entry" in caplog.text
    assert_same(served, original)
    assert len(entry_files(tmp_path)) == 2  # rewritten
    assert all(cache.get(frame) is not None for frame in frames)


# -- exactness ---------------------------------------------------------------------------


def test_mixed_cached_and_fresh_batches_equal_all_fresh_and_all_cached(tmp_path: Path) -> None:
    """A batch with one frame missing is computed whole (features depend on the batch in the
    last bit), and fresh and cached features have the same (contiguous) layout."""
    frames = make_frames(8)
    fresh = [CachedFeatureSource(CountingSource(batch_noise=True), None)(frames[i : i + 4]) for i in (0, 4)]
    CachedFeatureSource(CountingSource(batch_noise=True), new_cache(tmp_path))(frames[:4])
    CachedFeatureSource(CountingSource(batch_noise=True), new_cache(tmp_path))(frames[4:])
    entry_files(tmp_path)[0].unlink()  # one frame of one batch missing

    source = CountingSource(batch_noise=True)
    mixing = CachedFeatureSource(source, new_cache(tmp_path))
    mixed = [mixing(frames[i : i + 4]) for i in (0, 4)]
    assert (mixing.hits, mixing.misses, source.frames) == (4, 4, 4)
    cached = [CachedFeatureSource(CountingSource(), new_cache(tmp_path))(frames[i : i + 4]) for i in (0, 4)]
    for a, b, c in zip(fresh, mixed, cached):
        assert a.appearance.is_contiguous() and b.appearance.is_contiguous()
        assert_same(a, b)
        assert_same(a, c)


# -- resume and interruption -------------------------------------------------------------


def test_killed_run_resumes_from_written_frames(tmp_path: Path) -> None:
    frames = make_frames(10)
    killed = CachedFeatureSource(CountingSource(fail_on_call=3), new_cache(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        for i in range(0, 10, 2):
            killed(frames[i : i + 2])
    assert len(entry_files(tmp_path)) == 4
    source = CountingSource()
    resumed = CachedFeatureSource(source, new_cache(tmp_path))
    for i in range(0, 10, 2):
        resumed(frames[i : i + 2])
    assert (resumed.hits, resumed.misses, source.frames) == (4, 6, 6)


def test_write_killed_midway_leaves_no_entry(tmp_path: Path, monkeypatch) -> None:
    frames = make_frames(2)
    cache = new_cache(tmp_path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(cache.folder, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.put(frames, CountingSource()(frames))
    assert [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in (".lock", folder_module.MARKER)] == []


def test_no_cache_passes_through(tmp_path: Path) -> None:
    frames = make_frames(2)
    source = CountingSource()
    direct = CachedFeatureSource(source, None)
    assert_same(direct(frames), direct(frames))
    assert (source.calls, direct.hits, direct.misses) == (2, 0, 4)


# -- the bound ---------------------------------------------------------------------------


def entry_size(tmp_path: Path) -> int:
    frames = make_frames(1, seed=99)
    probe = new_cache(tmp_path / "probe")
    probe.put(frames, CountingSource()(frames))
    return entry_files(tmp_path / "probe")[0].stat().st_size


def test_bound_resolution(monkeypatch) -> None:
    monkeypatch.delenv(folder_module.MAX_GB_ENV, raising=False)
    assert resolve_max_bytes(None) == int(folder_module.DEFAULT_MAX_GB * 1e9)
    monkeypatch.setenv(folder_module.MAX_GB_ENV, "0.5")
    assert resolve_max_bytes(None) == 500_000_000
    assert resolve_max_bytes(2) == 2_000_000_000
    monkeypatch.setenv(folder_module.MAX_GB_ENV, "lots")
    with pytest.raises(InputError, match="PDMTRACK_CACHE_MAX_GB"):
        resolve_max_bytes(None)
    with pytest.raises(InputError, match="^cache_max_gb: "):
        resolve_max_bytes(0)


def test_eviction_keeps_the_bound_and_drops_least_recently_used(tmp_path: Path) -> None:
    size = entry_size(tmp_path)
    root = tmp_path / "cache"
    cache = new_cache(root, max_gb=10.5 * size / 1e9)
    frames = make_frames(30)
    cache.put(frames[:1], CountingSource()(frames[:1]))
    for i in range(1, 30):
        time.sleep(0.002)  # distinct modification times
        cache.get(frames[0])  # frame 0 stays in use
        cache.put(frames[i : i + 1], CountingSource()(frames[i : i + 1]))
        total = sum(p.stat().st_size for p in entry_files(root))
        assert total <= cache.folder.max_bytes
    assert cache.get(frames[0]) is not None, "the entry in use must survive"
    assert cache.get(frames[29]) is not None and cache.get(frames[1]) is None
    assert len(entry_files(root)) >= 9


def test_usage_record_is_recounted_when_missing_stale_or_too_high(tmp_path: Path) -> None:
    size = entry_size(tmp_path)
    root = tmp_path / "cache"
    cache = new_cache(root, max_gb=6.5 * size / 1e9)
    frames = make_frames(8)
    cache.put(frames[:4], CountingSource()(frames[:4]))
    (root / "usage").write_text(f"{10**9} {time.time()}")  # too high (a writer killed mid-commit)
    cache.put(frames[4:5], CountingSource()(frames[4:5]))
    assert len(entry_files(root)) == 5, "a recount, no needless eviction"
    (root / "usage").unlink()
    cache.put(frames[5:6], CountingSource()(frames[5:6]))
    assert (root / "usage").read_text().split()[0] == str(6 * size)
    (root / "usage").write_text(f"0 {time.time() - 2 * folder_module.RECOUNT_SECONDS}")  # too low, but old
    cache.put(frames[6:8], CountingSource()(frames[6:8]))
    assert len(entry_files(root)) == 5, "evicted down to the low-water mark"
    assert (root / "usage").read_text().split()[0] == str(5 * size)


def test_entry_above_the_bound_stops_caching_once(tmp_path: Path, caplog) -> None:
    size = entry_size(tmp_path)
    cache = new_cache(tmp_path / "cache", max_gb=0.5 * size / 1e9)
    frames = make_frames(4)
    source = CountingSource()
    cached = CachedFeatureSource(source, cache)
    with caplog.at_level(logging.WARNING):
        cached(frames[:2])
        cached(frames[2:])
    assert source.frames == 4 and entry_files(tmp_path / "cache") == []
    assert caplog.text.count("going on without caching") == 1


# -- sharing between processes -----------------------------------------------------------

WORKER = """
import sys, numpy as np
from tests.test_cache import CountingSource, make_frames, new_cache, assert_same
from pdmtrack.features.cache import CachedFeatureSource
from pathlib import Path
root, seed, max_gb = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
frames = np.concatenate([make_frames(24, seed=0), make_frames(24, seed=seed)])
rng = np.random.default_rng(seed)
for round_ in range(3):
    order = rng.permutation(len(frames) // 4)
    for i in order:
        batch = frames[4 * i : 4 * i + 4]
        served = CachedFeatureSource(CountingSource(), new_cache(root, max_gb=max_gb))(batch)
        assert_same(served, CountingSource()(batch).contiguous())
print("ok")
"""


def test_concurrent_processes_share_one_bounded_cache(tmp_path: Path) -> None:
    """Two processes read and write one folder whose bound holds under half of their frames:
    every batch served equals a fresh computation, and the bound holds throughout."""
    size = entry_size(tmp_path)
    root = tmp_path / "cache"
    max_gb = 30.5 * size / 1e9
    script = WORKER
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(root), str(seed), str(max_gb)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    bound = resolve_max_bytes(max_gb)
    peak = 0
    while any(worker.poll() is None for worker in workers):
        with CacheFolder(root, bound).locked():  # the published entries, between commits
            peak = max(peak, sum(entry.size for entry in CacheFolder(root, bound).entries()))
        time.sleep(0.01)
    for worker in workers:
        out, err = worker.communicate()
        assert worker.returncode == 0 and out.strip() == "ok", err
    assert 0 < peak <= bound
    assert sum(p.stat().st_size for p in entry_files(root)) <= bound
    assert list((root / "tmp").iterdir()) == []


# -- unwritable, full disk ---------------------------------------------------------------


def test_unusable_folder_is_one_input_error_up_front(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(InputError, match="--cache-dir"):
        CacheFolder(not_a_dir, 10**9).check()
    with pytest.raises(InputError, match="--cache-dir"):
        CacheFolder(not_a_dir / "sub", 10**9).check()
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="cannot write the feature cache"):
            CacheFolder(locked, 10**9).check()


def test_full_disk_is_refused_up_front(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(CacheFolder, "free_bytes", lambda self: 10**6)
    with pytest.raises(InputError, match="full.*--no-cache"):
        CacheFolder(tmp_path, 10**9).check()


def test_disk_filling_mid_run_goes_on_without_caching(tmp_path: Path, monkeypatch, caplog) -> None:
    frames = make_frames(8)
    cache = new_cache(tmp_path)
    source = CountingSource()
    cached = CachedFeatureSource(source, cache)
    cached(frames[:4])
    monkeypatch.setattr(CacheFolder, "free_bytes", lambda self: folder_module.FREE_RESERVE_BYTES)
    with caplog.at_level(logging.WARNING):
        cached(frames[4:6])
        cached(frames[6:])
    assert source.frames == 8 and len(entry_files(tmp_path)) == 4
    assert caplog.text.count("nearly full") == 1 and not cache.writing
    assert cached(frames[:4]) is not None and cached.hits == 4  # reading goes on


def test_write_error_mid_run_goes_on_without_caching(tmp_path: Path, monkeypatch, caplog) -> None:
    frames = make_frames(4)
    cache = new_cache(tmp_path)

    def no_space(data: bytes) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.folder, "stage", no_space)
    with caplog.at_level(logging.WARNING):
        CachedFeatureSource(CountingSource(), cache)(frames)
    assert "No space left on device" in caplog.text and not cache.writing


# -- default folder, info and clear ------------------------------------------------------


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


def fill_two_groups(root: Path) -> None:
    frames = make_frames(6)
    FeatureCache(root, "fp-a", description={"model": "org/model-a"}).put(frames[:4], CountingSource()(frames[:4]))
    FeatureCache(root, "fp-b", description={"model": "org/model-b"}).put(frames[4:], CountingSource()(frames[4:]))


def test_info_and_clear_by_model_and_age(tmp_path: Path) -> None:
    fill_two_groups(tmp_path)
    report = CacheFolder(tmp_path, 10**9).report()
    assert report.entries == 6 and {g.name: g.entries for g in report.groups} == {"fp-a": 4, "fp-b": 2}
    assert "org/model-a" in report.format() and "fp-b: 2 entries" in report.format()

    old = time.time() - 3 * 86400
    for path in entry_files(tmp_path / "fp-a")[:3]:
        os.utime(path, (old, old))
    folder = CacheFolder(tmp_path, 10**9)
    assert folder.clear(older_than_days=2)[0] == 3
    assert folder.clear(model="org/model-b")[0] == 2
    assert not (tmp_path / "fp-b").exists()
    assert folder.report().entries == 1
    assert folder.clear()[0] == 1 and folder.report().entries == 0


def test_cache_commands(tmp_path: Path, capsys, monkeypatch) -> None:
    fill_two_groups(tmp_path)
    info = run_cli(["cache", "info", "--cache-dir", tmp_path], capsys, monkeypatch)
    assert info.code == 0 and "6 entries" in info.out and "org/model-b" in info.out
    cleared = run_cli(["cache", "clear", "--cache-dir", tmp_path, "--model", "org/model-a"], capsys, monkeypatch)
    assert cleared.code == 0 and "removed 4 entries" in cleared.out
    assert_one_line_error(run_cli(["cache", "clear", "--cache-dir", tmp_path, "--older-than", "-1"], capsys, monkeypatch), "--older-than")
    monkeypatch.setenv(folder_module.MAX_GB_ENV, "-3")
    assert_one_line_error(run_cli(["cache", "info", "--cache-dir", tmp_path], capsys, monkeypatch), "PDMTRACK_CACHE_MAX_GB")


def test_stale_temporaries_are_removed(tmp_path: Path, monkeypatch) -> None:
    size = entry_size(tmp_path)
    root = tmp_path / "cache"
    cache = new_cache(root, max_gb=2.5 * size / 1e9)
    left_over = cache.folder.stage(b"half an entry")
    old = time.time() - 2 * folder_module.STALE_TEMP_SECONDS
    os.utime(left_over, (old, old))
    frames = make_frames(4)
    for i in range(4):  # the third needs an eviction scan
        cache.put(frames[i : i + 1], CountingSource()(frames[i : i + 1]))
    assert not left_over.exists()
    assert cache_module.FORMAT_VERSION == "2"


# -- never touching files the cache did not write ----------------------------------------


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``root``, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def home_like(root: Path) -> Path:
    """A user's folder: documents, a project, pictures, and a file in tmp/ two hours old."""
    for name, data in {
        "Documents/notes.txt": b"my notes",
        "project/src/main.py": b"print('hi')\n",
        "Pictures/cat.png": b"\x89PNG not really",
        "tmp/old_file": b"keep me",
        ".bashrc": b"export X=1\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    old = time.time() - 2 * 3600
    os.utime(root / "tmp" / "old_file", (old, old))
    return root


def davis_clip(davis_mini: Path, folder: Path) -> tuple[Path, Path]:
    """Three downscaled blackswan frames and their first mask."""
    from pdmtrack.io.writers import write_palette_png

    folder.mkdir()
    source = davis_mini / "JPEGImages" / "480p" / "blackswan"
    for index in range(3):
        Image.open(source / f"{index:05d}.jpg").resize((107, 60)).save(folder / f"{index:05d}.jpg")
    swan = np.asarray(Image.open(davis_mini / "Annotations" / "480p" / "blackswan" / "00000.png").resize((107, 60), Image.NEAREST))
    mask = folder.parent / "mask.png"
    write_palette_png(mask, (swan > 0).astype(np.uint8))
    return folder, mask


def test_a_model_folder_as_cache_dir_is_refused_untouched(davis_mini, tiny_sdxl, tmp_path: Path, capsys, monkeypatch) -> None:
    """--cache-dir pointed at a folder of diffusers models with a tiny bound: the run stops
    before any model loads and every weight file survives byte for byte."""
    models = tmp_path / "models"
    rng = np.random.default_rng(0)
    for name in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "model_index.json"):  # fmt: skip
        path = models / "fake-sdxl" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.integers(0, 256, 800_000, dtype=np.uint8).tobytes())
        old = time.time() - 86400
        os.utime(path, (old, old))
    before = snapshot(models)
    clip, mask = davis_clip(davis_mini, tmp_path / "clip")
    args = ["propagate", clip, "--mask", mask, "-o", tmp_path / "out", "--model", tiny_sdxl, "--sam", "none",
            "--size", "64", "--device", "cpu", "--cache-dir", models, "--cache-max-gb", "0.002"]  # fmt: skip
    result = run_cli(args, capsys, monkeypatch)
    assert_one_line_error(result, str(models), "not a pdmtrack feature cache", "--cache-dir")
    assert snapshot(models) == before


def test_cache_commands_refuse_a_home_like_folder_untouched(tmp_path: Path, capsys, monkeypatch) -> None:
    home = home_like(tmp_path / "home")
    before = snapshot(home)
    for command in ("clear", "info"):
        assert_one_line_error(run_cli(["cache", command, "--cache-dir", home], capsys, monkeypatch), str(home), "not a pdmtrack")
    monkeypatch.chdir(home)
    assert_one_line_error(run_cli(["cache", "clear", "--cache-dir", "."], capsys, monkeypatch), "not a pdmtrack")
    with pytest.raises(InputError, match="not a pdmtrack feature cache"):
        CacheFolder(home, 10**9).check()  # what a run with --cache-dir HOME does first
    assert snapshot(home) == before


def test_cache_info_on_a_file_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a cache")
    assert_one_line_error(run_cli(["cache", "info", "--cache-dir", path], capsys, monkeypatch), str(path), "is a file")
    assert_one_line_error(run_cli(["cache", "clear", "--cache-dir", path], capsys, monkeypatch), str(path), "is a file")
    assert path.read_bytes() == b"not a cache"


def test_eviction_and_clear_remove_only_the_cache_own_files(tmp_path: Path) -> None:
    """Files a user put into a cache folder, even named like entries or temporaries, and
    the folders holding them survive eviction and clearing; emptied cache folders go."""
    size = entry_size(tmp_path)
    root = tmp_path / "cache"
    cache = new_cache(root, max_gb=3.5 * size / 1e9)
    frames = make_frames(8)
    cache.put(frames[:1], CountingSource()(frames[:1]))
    old = time.time() - 2 * folder_module.STALE_TEMP_SECONDS
    theirs = {
        "tmp/old_file": b"keep me",
        "tmp/.entry.1-notmine.tmp": b"keep me too",
        "fp-a/ab/weights.safetensors": b"x" * (4 * size),
        "fp-a/notes.txt": b"mine",
        "unet/xy/diffusion_pytorch_model.safetensors": b"y" * (4 * size),
        "Documents/letter.txt": b"dear",
    }
    for name, data in theirs.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        os.utime(root / name, (old, old))  # the least recently used files of the folder
    (root / "Pictures").mkdir()

    def ours() -> list[Path]:
        return [p for p in entry_files(root) if str(p.relative_to(root)) not in theirs]

    for i in range(1, 8):
        cache.put(frames[i : i + 1], CountingSource()(frames[i : i + 1]))
    assert 0 < len(ours()) <= 3, "evicted down to the bound, counting only the cache's entries"
    left = len(ours())
    assert CacheFolder(root, 10**9).clear() == (left, left * size)
    assert ours() == []
    assert {name: (root / name).read_bytes() for name in theirs} == theirs and (root / "Pictures").is_dir()
    assert {p.name for p in (root / "fp-a").iterdir()} == {"ab", "notes.txt", "info.json"}  # not emptied: kept


def test_an_older_pdmtrack_cache_is_adopted_and_anything_else_refused(tmp_path: Path) -> None:
    root = tmp_path / "features"
    fill_two_groups(root)
    (root / folder_module.MARKER).unlink()  # as an older pdmtrack left it
    (root / "sam").mkdir()
    (root / "sam" / "sam_vit_b_01ec64.pth").write_bytes(b"checkpoint")
    CacheFolder(root, 10**9).check()
    assert json.loads((root / folder_module.MARKER).read_text())["format"] == 1
    assert CacheFolder(root, 10**9).report().entries == 6

    (root / folder_module.MARKER).unlink()
    (root / "fp-a" / "notes.txt").write_text("not the cache's")
    before = snapshot(root)
    with pytest.raises(InputError, match="not a pdmtrack feature cache"):
        CacheFolder(root, 10**9).check()
    assert snapshot(root) == before

    (root / "fp-a" / "notes.txt").unlink()
    (root / folder_module.MARKER).write_text(json.dumps({"format": 7}))
    with pytest.raises(InputError, match="format 7"):
        CacheFolder(root, 10**9).check()


def test_empty_or_missing_folder_becomes_a_cache(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "empty", tmp_path / "new" / "cache"):
        CacheFolder(root, 10**9).check()
        assert json.loads((root / folder_module.MARKER).read_text())["format"] == 1


def test_clearing_a_read_only_cache_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    fill_two_groups(tmp_path)
    before = snapshot(tmp_path)

    def refused(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refused)  # as in a folder the user may read only
    result = run_cli(["cache", "clear", "--cache-dir", tmp_path], capsys, monkeypatch)
    assert_one_line_error(result, str(tmp_path), "cannot clear the feature cache", "Permission denied")
    monkeypatch.undo()
    assert snapshot(tmp_path) == before


class NanSource(CountingSource):
    description = {"model": "/models/damaged"}

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        features = super().__call__(frames)
        features.semantic = features.semantic.clone()
        features.semantic[-1, 0, 0, 0] = float("nan")
        return features


def test_non_finite_features_are_refused_and_never_cached(tmp_path: Path) -> None:
    frames = make_frames(3)
    with pytest.raises(InputError, match=r"^/models/damaged: the model produced non-finite features"):
        CachedFeatureSource(NanSource(), new_cache(tmp_path))(frames)
    assert entry_files(tmp_path) == []


def test_a_model_with_nan_weights_stops_the_run_and_caches_nothing(davis_mini, tiny_sdxl, tmp_path: Path, capsys, monkeypatch) -> None:
    from safetensors.torch import load_file, save_file

    model = tmp_path / "damaged-sdxl"
    shutil.copytree(tiny_sdxl, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({name: torch.full_like(tensor, float("nan")) for name, tensor in load_file(weights).items()}, weights)
    clip, mask = davis_clip(davis_mini, tmp_path / "clip")
    cache = tmp_path / "cache"
    args = ["propagate", clip, "--mask", mask, "-o", tmp_path / "out", "--model", model, "--sam", "none",
            "--size", "64", "--device", "cpu", "--cache-dir", cache]  # fmt: skip
    result = run_cli(args, capsys, monkeypatch)
    assert_one_line_error(result, str(model.resolve()), "non-finite features (NaN/inf)")
    assert entry_files(cache) == []


def test_segment_ov_refuses_a_foreign_cache_dir_before_loading(tiny_sdxl, tmp_path: Path, capsys, monkeypatch) -> None:
    import pdmtrack.ovdiff.pipeline as ovdiff_run

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ovdiff_run, "load_models", no_load)
    home = home_like(tmp_path / "home")
    before = snapshot(home)
    image = tmp_path / "image.jpg"
    Image.fromarray(make_frames(1)[0]).save(image)
    args = ["segment-ov", image, "--classes", "dog", "-o", tmp_path / "out", "--model", tiny_sdxl, "--sam", "none",
            "--device", "cpu", "--cache-dir", home]  # fmt: skip
    assert_one_line_error(run_cli(args, capsys, monkeypatch), str(home), "not a pdmtrack feature cache")
    assert snapshot(home) == before
