"""Export speed (frames/s) and peak memory of ``pdmtrack export``, per format.

Builds a finished output folder in a temporary folder, as ``propagate`` leaves it: an 854x480
mp4 (the run's video, which ``cutout`` decodes), one DAVIS palette PNG per frame with three
moving objects (one leaves and comes back, one touches the border) and ``run.json``; then
exports it once per format, each in a fresh subprocess, so every measurement starts from a
clean process.

Memory: ``peak RSS`` is the subprocess's resident high-water mark during the export (Linux:
``VmHWM``, reset just before the export starts, after the imports); ``growth`` is that peak
minus the resident set at the start. Flat growth from the shorter to the longer output means
the export does not hold the video. ``cutout`` is measured without and with ``--matte``.

    python benchmarks/bench_export.py                          # 250 vs 1000 frames, every format
    python benchmarks/bench_export.py --frames 1000 --formats coco youtube-vis
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import current_rss_kib, moving_texture  # noqa: E402
from pdmtrack.io.exports import FORMATS  # noqa: E402
from pdmtrack.io.writers import MaskPngWriter, write_video  # noqa: E402
from pdmtrack.runs import record as run_record  # noqa: E402

HEIGHT, WIDTH = 480, 854
CLASSES = ["person", "dog", "car"]


def moving_objects(num_frames: int) -> Iterator[np.ndarray]:
    """Label maps of three objects: a disc crossing the frame (gone every 200 frames for 50),
    a box on the left border, a growing ellipse."""
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    for index in range(num_frames):
        labels = np.zeros((HEIGHT, WIDTH), np.uint8)
        if index % 200 < 150:
            x, y = (4 * index) % WIDTH, HEIGHT // 3
            labels[(cols - x) ** 2 + (rows - y) ** 2 < 60**2] = 1
        top = 100 + (index % 120)
        labels[top : top + 150, 0:90] = 2
        radius = 40 + (index % 100)
        labels[((cols - WIDTH // 2) / (1.6 * radius)) ** 2 + ((rows - 2 * HEIGHT // 3) / radius) ** 2 < 1] = 3
        yield labels


def build_run(folder: Path, num_frames: int) -> Path:
    """A finished output folder of ``num_frames`` frames (and its video beside it)."""
    video = folder / f"clip_{num_frames}.mp4"
    write_video(video, moving_texture(num_frames, HEIGHT, WIDTH), fps=30)
    out = folder / f"out_{num_frames}"
    names = [f"{index:05d}" for index in range(num_frames)]
    pngs = MaskPngWriter(out)
    for name, labels in zip(names, moving_objects(num_frames)):
        pngs.write(name, labels)
    record = run_record.describe(
        video=video, start=0, end=num_frames, direction="forward", masks=None, classes=CLASSES,
        outputs={"png": True, "overlay": False, "rle": False}, files=[f"{name}.png" for name in names], settings=None,
        frame_names=names, size=(HEIGHT, WIDTH), fps=30.0, objects=dict(zip([1, 2, 3], CLASSES)),
    )  # fmt: skip
    run_record.write_started(out, record)
    run_record.write_finished(out, record, num_frames, 0.0)
    return out


def peak_rss_kib() -> int:
    """The process's resident high-water mark (VmHWM) in KiB."""
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])


def measure(run_folder: str, export_format: str, matte: bool) -> dict:
    """Export once (this runs inside the fresh subprocess)."""
    from pdmtrack.runs.export_folder import export

    rss_before = current_rss_kib()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: the peak below is the export's
    start = time.perf_counter()
    target = export(
        run_folder,
        export_format,
        Path(run_folder).parent / f"{Path(run_folder).name}.{export_format}{'-matte' if matte else ''}",
        matte=matte,
    )
    seconds = time.perf_counter() - start
    peak = peak_rss_kib()
    size = sum(p.stat().st_size for p in target.rglob("*")) if target.is_dir() else target.stat().st_size
    return {"seconds": seconds, "peak_kib": peak, "growth_kib": peak - rss_before, "bytes": size}


def run_worker(run_folder: Path, export_format: str, matte: bool) -> dict:
    command = [sys.executable, __file__, "--worker", str(run_folder), "--formats", export_format, *(["--matte"] if matte else [])]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[250, 1000], help="output lengths to compare")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--matte", action="store_true", help=argparse.SUPPRESS)  # a worker's cutout with --matte
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.formats[0], args.matte)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for count in args.frames:
            start = time.perf_counter()
            runs[count] = build_run(Path(tmp), count)
            print(f"built a {count}-frame, 3-object output folder ({WIDTH}x{HEIGHT}) in {time.perf_counter() - start:.1f}s")
        print(f"\n{'format':15} {'frames':>7} {'frames/s':>9} {'output MiB':>11} {'peak RSS MiB':>13} {'growth MiB':>11}")
        cases = [(f, False) for f in args.formats] + ([("cutout", True)] if "cutout" in args.formats else [])
        for export_format, matte in cases:
            for count, run_folder in runs.items():
                result = run_worker(run_folder, export_format, matte)
                name = export_format + (" --matte" if matte else "")
                print(
                    f"{name:15} {count:7d} {count / result['seconds']:9.1f} {result['bytes'] / 2**20:11.1f} "
                    f"{result['peak_kib'] / 1024:13.1f} {result['growth_kib'] / 1024:11.1f}"
                )


if __name__ == "__main__":
    main()
