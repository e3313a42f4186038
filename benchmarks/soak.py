"""Soak: many `pdmtrack propagate` runs against one output folder and one feature cache,
with SIGKILLs at random points and restarts.

Each run is the same command (a short clip, the tiny random-weight model, --sam none,
PNGs + overlay + masks.json). Some runs are killed after a random delay (uniform over the
clean run's duration); the others must complete. Checked and counted:

- every completed run's outputs are identical to a clean run's (into a fresh folder and a
  fresh cache): the same file names, the same PNG and masks.json bytes, the same overlay
  (bytes, else decoded frames);
- after every completed run, no temporary is left in the output folder or the cache;
- no damaged cache entry is ever served (a damaged one would change the masks, and the
  runs' "discarding damaged entry" warnings are counted), and at the end every cache entry
  passes its checksum.

    python benchmarks/soak.py                  # 200 runs (about 10 s each on a 2-core CPU)
    python benchmarks/soak.py --runs 20 --seed 1

Exit code 0 when every check held.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pdmtrack.features.cache import _CorruptEntry, _decode  # noqa: E402
from pdmtrack.io.files import LOCK_FILE  # noqa: E402
from pdmtrack.io.writers import write_palette_png, write_video  # noqa: E402
from pdmtrack.runs.record import RUN_RECORD  # noqa: E402
from pdmtrack.testing.diffusion import build_tiny_pipeline  # noqa: E402

HEIGHT, WIDTH, FRAMES = 48, 64, 8


def make_inputs(work: Path) -> tuple[Path, Path, Path]:
    """(clip, first-frame mask, tiny model folder) under ``work``."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (HEIGHT, WIDTH * 2, 3), dtype=np.uint8)
    frames = [np.ascontiguousarray(base[:, t : t + WIDTH]) for t in range(FRAMES)]
    clip = work / "clip.mp4"
    write_video(clip, frames, fps=10)
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    labels[8:24, 8:28] = 1
    labels[28:44, 36:60] = 2
    mask = work / "first.png"
    write_palette_png(mask, labels)
    model = build_tiny_pipeline(work / "tiny-sdxl", family="sdxl")
    return clip, mask, model


def command(clip: Path, mask: Path, model: Path, out: Path, cache: Path) -> list[str]:
    return [
        sys.executable, "-m", "pdmtrack.cli", "propagate", str(clip), "--mask", str(mask), "-o", str(out),
        "--model", str(model), "--sam", "none", "--size", "64", "--batch-size", "2", "--cache-dir", str(cache),
        "--rle",
    ]  # fmt: skip


def environment() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("PDMTRACK_CACHE_DIR", None)
    return env


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file of an output folder but the run record (times differ), by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name not in (RUN_RECORD, LOCK_FILE)}


def overlay_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def compare(got: dict[str, bytes], want: dict[str, bytes], folder: Path, reference: Path) -> str:
    """'identical', 'overlay frames identical' or what differs."""
    if sorted(got) != sorted(want):
        return f"files differ: {sorted(set(got) ^ set(want))}"
    differing = [name for name in want if got[name] != want[name]]
    if not differing:
        return "identical"
    if differing == ["overlay.mp4"] and np.array_equal(overlay_frames(folder / "overlay.mp4"), overlay_frames(reference / "overlay.mp4")):
        return "overlay frames identical"
    return f"content differs: {differing}"


def temporaries(out: Path, cache: Path) -> list[Path]:
    """pdmtrack's temporaries (atomic writes, cache staging, backward scratch) left behind;
    the folder's run lock file stays by design."""
    found = [p for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]
    staging = cache / "tmp"
    found += list(staging.iterdir()) if staging.is_dir() else []
    return found


def damaged_entries(cache: Path) -> int:
    """Cache entries that fail their own checks (tensor set, checksum, shapes)."""
    damaged = 0
    for path in cache.rglob("*.safetensors"):
        try:
            _decode(path.read_bytes(), {})
        except _CorruptEntry:
            damaged += 1
    return damaged


def run_once(cmd: list[str], kill_after: float | None) -> tuple[str, float, str]:
    """('completed' | 'killed' | 'failed <code>', seconds, stderr)."""
    began = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(cmd, cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return "killed", time.perf_counter() - began, ""
        err.seek(0)
        text = err.read().decode(errors="replace")
    status = "completed" if process.returncode == 0 else f"failed {process.returncode}"
    return status, time.perf_counter() - began, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--kill-share", type=float, default=0.5, help="share of runs that get a SIGKILL")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="pdmtrack-soak.") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        clip, mask, model = make_inputs(work)
        reference = work / "reference"
        status, clean_seconds, err = run_once(command(clip, mask, model, reference, work / "reference-cache"), None)
        if status != "completed":
            print(f"the clean run failed ({status}):\n{err}")
            return 1
        want = outputs(reference)
        out, cache = work / "out", work / "cache"
        counts: Counter[str] = Counter()
        killed_leftovers = 0
        began = time.perf_counter()
        for index in range(args.runs + 1):
            last = index == args.runs  # a final run that is never killed
            kill_after = None if last or rng.random() >= args.kill_share else rng.uniform(0.0, 1.1 * clean_seconds)
            status, seconds, err = run_once(command(clip, mask, model, out, cache), kill_after)
            if not last:
                counts[f"runs {status.split()[0]}"] += 1
            counts["damaged-entry warnings"] += err.count("discarding damaged entry")
            if status == "killed":
                left = len(temporaries(out, cache)) if out.exists() else 0
                killed_leftovers += bool(left)
                print(f"run {index}: killed after {seconds:.1f} s, {left} temporaries left", flush=True)
                continue
            if status != "completed":
                print(f"run {index}: {status}\n{err}", flush=True)
                continue
            verdict, left = compare(outputs(out), want, out, reference), len(temporaries(out, cache))
            counts[f"completed: {verdict}"] += 1
            counts["completed runs leaving temporaries"] += bool(left)
            print(f"run {index}: completed in {seconds:.1f} s: {verdict}, {left} temporaries", flush=True)
        entries = list(cache.rglob("*.safetensors"))
        counts["cache entries at the end"] = len(entries)
        counts["damaged cache entries at the end"] = damaged_entries(cache)
        counts["temporaries after the final run"] = len(temporaries(out, cache))
        counts["killed runs that left temporaries (removed by a later run)"] = killed_leftovers
        print(f"\nsoak: {args.runs} runs (+1 final) in {time.perf_counter() - began:.0f} s; clean run {clean_seconds:.1f} s")
        for name, count in sorted(counts.items()):
            print(f"  {count:5d}  {name}")
        bad = sum(count for name, count in counts.items() if "differs" in name or name.startswith("runs failed"))
        bad += counts["completed runs leaving temporaries"] + counts["damaged cache entries at the end"]
        bad += counts["temporaries after the final run"] + counts["damaged-entry warnings"]
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
