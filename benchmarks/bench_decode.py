"""Decode throughput and peak memory of FrameReader, per backend and clip length.

Generates 480p clips of moving textured content with ``write_video`` in a temporary
folder, then reads each clip with ``FrameReader.batches`` in a fresh subprocess per
(backend, length), so every measurement starts from a clean process.

Memory: ``peak RSS`` is the subprocess's ``ru_maxrss`` (whole process, Linux); ``growth``
is that peak minus the resident set measured just before decoding starts (after imports
and opening the reader). Flat growth from 300 to 1200 frames means the reader does not
hold the video.

    python benchmarks/bench_decode.py                      # 300 vs 1200 frames, both backends
    python benchmarks/bench_decode.py --frames 500 --backends pyav
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdmtrack.io.video import FrameReader  # noqa: E402
from pdmtrack.io.writers import write_video  # noqa: E402


def moving_texture(num_frames: int, height: int = 480, width: int = 854, seed: int = 0) -> Iterator[np.ndarray]:
    """Frames of a panning random texture with two bright squares moving across it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 2, 2 * width // 8 + 2, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)  # blocky, so it compresses like video
    texture = (texture // 2 + rng.integers(0, 64, texture.shape, dtype=np.uint8)).astype(np.uint8)
    for index in range(num_frames):
        shift = (3 * index) % width
        frame = texture[:height, shift : shift + width].copy()
        for speed, colour in ((5, (255, 60, 60)), (-7, (60, 255, 60))):
            x = (speed * index) % (width - 80)
            y = (height // 3 if speed > 0 else 2 * height // 3) - 40
            frame[y : y + 80, x : x + 80] = colour
        yield frame


def current_rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024


def measure(path: str, backend: str, batch_size: int) -> dict:
    """Decode the whole clip once (this runs inside the fresh subprocess)."""
    reader = FrameReader(path, backend=backend)
    rss_before = current_rss_kib()
    start = time.perf_counter()
    frames = 0
    checksum = 0
    for indices, batch in reader.batches(batch_size):
        frames += len(indices)
        checksum += int(batch[:, ::97, ::97].sum())  # touch the data
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "frames": frames,
        "seconds": seconds,
        "peak_kib": peak,
        "growth_kib": peak - rss_before,
        "expected": reader.num_frames,
        "checksum": checksum,
    }


def run_worker(path: Path, backend: str, batch_size: int) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--worker", str(path), "--backends", backend, "--batch-size", str(batch_size)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[300, 1200], help="clip lengths to compare")
    parser.add_argument("--backends", nargs="+", default=["decord", "pyav"], choices=["decord", "pyav"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.backends[0], args.batch_size)))
        return
    backends = [b for b in args.backends if b != "decord" or importlib.util.find_spec("decord")]
    with tempfile.TemporaryDirectory() as tmp:
        clips = {}
        for count in args.frames:
            clips[count] = Path(tmp) / f"clip_{count}.mp4"
            start = time.perf_counter()
            write_video(clips[count], moving_texture(count), fps=30)
            size_mib = clips[count].stat().st_size / 2**20
            print(f"generated {count} frames 854x480 ({size_mib:.1f} MiB) in {time.perf_counter() - start:.1f}s")
        print(f"\n{'backend':8} {'frames':>7} {'frames/s':>9} {'peak RSS MiB':>13} {'growth MiB':>11}")
        for backend in backends:
            for count, path in clips.items():
                result = run_worker(path, backend, args.batch_size)
                assert result["frames"] == result["expected"] == count, result
                print(
                    f"{backend:8} {count:7d} {result['frames'] / result['seconds']:9.1f} "
                    f"{result['peak_kib'] / 1024:13.1f} {result['growth_kib'] / 1024:11.1f}"
                )


if __name__ == "__main__":
    main()
