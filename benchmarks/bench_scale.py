"""Scale-out and long-video figures, tiny random-weight model on CPU (no download).

1. videos/s and frames/s of ``propagate-batch`` over a folder of short clips with 1 worker
   (in process) and 2 Ray workers (a local cluster), wall time including model loading
   (and Ray's start for 2 workers), features computed (no cache) in both.
2. One long video (an mp4, default 30,000 frames): peak RSS sampled at frame milestones
   (flat memory means no growth with length), outputs PNG + RLE + overlay, and the feature
   cache's size against a small bound (``--cache-max-gb``) that forces eviction.

    python benchmarks/bench_scale.py                     # both parts
    python benchmarks/bench_scale.py --skip-long         # only the workers part
    python benchmarks/bench_scale.py --long-frames 3000  # a shorter long video
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pdmtrack


def make_clip(folder: Path, frames: int, height: int, width: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for t in range(frames):
        frame = rng.integers(70, 130, (height, width, 3), dtype=np.uint8)
        x = 4 + (2 * t) % (width - 24)
        frame[8:28, x : x + 20] = (220, 60, 50)
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=90)


def first_mask(path: Path, height: int, width: int) -> None:
    from pdmtrack.io.writers import write_palette_png

    labels = np.zeros((height, width), dtype=np.uint8)
    labels[8:28, 4:24] = 1
    write_palette_png(path, labels)


def settings_for(model: Path, cache: Path | None, max_gb: float | None = None, batch: int = 4):
    from pdmtrack.config import FeatureConfig, RuntimeConfig, SamConfig, TrackSettings

    runtime = RuntimeConfig(device="cpu", batch_size=batch, cache_dir=cache, use_cache=cache is not None, cache_max_gb=max_gb)
    return TrackSettings(FeatureConfig(model=str(model), size=64, inversion="noise"), sam=SamConfig(model_type="none"), runtime=runtime)


def bench_workers(work: Path, model: Path, videos: int, frames: int, height: int, width: int) -> None:
    from pdmtrack.runs.batch import folder_rows, propagate_batch

    for index in range(videos):
        make_clip(work / "videos" / f"clip{index:02d}", frames, height, width, index)
        first_mask(work / "masks" / f"clip{index:02d}.png", height, width)
    rows = folder_rows(work / "videos", work / "masks")
    print(f"workers: {videos} clips x {frames} frames of {width}x{height}, tiny SDXL, --size 64, "
          "--inversion noise, --sam none, no feature cache, PNGs only")  # fmt: skip
    for workers in (1, 2):
        began = time.perf_counter()
        outcome = propagate_batch(rows, work / f"out-{workers}", settings_for(model, None), base=Path("."), overlay=False, workers=workers)
        seconds = time.perf_counter() - began
        done = sum(r.status == "done" for r in outcome.results)
        total = sum(r.frames for r in outcome.results)
        print(f"  {workers} worker(s): {seconds:.1f} s wall, {done / seconds:.3f} videos/s, {total / seconds:.2f} frames/s "
              f"({done}/{videos} done)")  # fmt: skip


def write_long_video(path: Path, frames: int, height: int, width: int) -> None:
    from pdmtrack.io.writers import VideoWriter

    rng = np.random.default_rng(0)
    base = rng.integers(70, 130, (height, width, 3), dtype=np.uint8)
    with VideoWriter(path, 24.0, width, height) as writer:
        for t in range(frames):
            frame = base.copy()
            x = 4 + (t // 2) % (width - 24)
            frame[8:28, x : x + 20] = (220, 60, 50)
            for bit in range(16):  # frame t's number in 4x4 blocks: no two frames share a cache entry
                frame[-4:, 4 * bit : 4 * bit + 4] = 255 if (t >> bit) & 1 else 0
            writer.write(frame)


def bench_long(work: Path, model: Path, frames: int, height: int, width: int, max_gb: float) -> None:
    from pdmtrack.features.cache_folder import CacheFolder, resolve_max_bytes
    from pdmtrack.runs.video_folder import plan_video, track_to_folder
    from pdmtrack.tracking.tracker import Tracker

    video = work / "long.mp4"
    tick = time.perf_counter()
    write_long_video(video, frames, height, width)
    print(f"long video: {frames} frames of {width}x{height} (mp4 written in {time.perf_counter() - tick:.0f} s); "
          f"tiny SDXL, --size 64, --inversion noise, --sam none, batch 8; PNG + RLE + overlay; "
          f"--cache-max-gb {max_gb}")  # fmt: skip
    first_mask(work / "long_mask.png", height, width)
    cache = work / "cache"
    bound = resolve_max_bytes(max_gb)
    process = psutil.Process()
    samples: dict[int, float] = {}
    largest_cache = [0]
    done = [0]
    stop = threading.Event()

    def watch_cache() -> None:
        while not stop.wait(2.0):
            with CacheFolder(cache, bound).locked():
                size = sum(entry.size for entry in CacheFolder(cache, bound).entries())
            largest_cache[0] = max(largest_cache[0], size)

    milestones = sorted({m for m in (100, 1000, 3000, 10000, 20000, frames) if m <= frames})

    def on_frame() -> None:
        done[0] += 1
        if done[0] in milestones:
            samples[done[0]] = process.memory_info().rss / 2**20

    tracker = Tracker(settings_for(model, cache, max_gb, batch=8))
    plan = plan_video(video, work / "long_out", masks={0: work / "long_mask.png"}, overlay=True, rle=True)
    watcher = threading.Thread(target=watch_cache, daemon=True)
    watcher.start()
    began = time.perf_counter()
    summary = track_to_folder(tracker, plan, on_frame=on_frame)
    seconds = time.perf_counter() - began
    stop.set()
    watcher.join()
    final = CacheFolder(cache, bound).report()
    peak = process.memory_info().rss / 2**20
    print(f"  {summary.frames} frames in {seconds:.0f} s ({summary.frames / seconds:.1f} frames/s)")
    print("  RSS at frame: " + ", ".join(f"{m}: {samples[m]:.0f} MiB" for m in milestones if m in samples))
    print(f"  peak RSS of the process (ru_maxrss): {_max_rss_mib():.0f} MiB; RSS at the end {peak:.0f} MiB")
    print(f"  feature cache: {final.size / 1e6:.1f} MB in {final.entries} entries at the end, largest seen "
          f"{largest_cache[0] / 1e6:.1f} MB; bound {bound / 1e6:.1f} MB")  # fmt: skip
    outputs = sum(p.stat().st_size for p in (work / "long_out").iterdir())
    print(f"  outputs: {outputs / 1e6:.1f} MB ({len(list((work / 'long_out').glob('*.png')))} PNGs, masks.json, overlay.mp4)")


def _max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6, help="clips for the workers part")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--long-frames", type=int, default=30000)
    parser.add_argument("--cache-max-gb", type=float, default=0.02, help="bound for the long run (forces eviction)")
    parser.add_argument("--skip-workers", action="store_true")
    parser.add_argument("--skip-long", action="store_true")
    args = parser.parse_args()

    from pdmtrack.testing.diffusion import build_tiny_pipeline

    work = Path(tempfile.mkdtemp(prefix="bench_scale."))
    try:
        model = build_tiny_pipeline(work / "tiny-sdxl", family="sdxl")
        if not args.skip_workers:
            bench_workers(work, model, args.videos, args.frames, 96, 128)
        if not args.skip_long:
            bench_long(work, model, args.long_frames, 48, 64, args.cache_max_gb)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
