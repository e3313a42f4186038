"""Click-to-mask time of ``Tracker.add_points``: the first click on a frame (SAM's image
encoder + decoder) against a later click on the same frame (decoder only, the frame's
embedding kept), with the ratio between them.

SAM is built from its published vit_b (or vit_l/vit_h) architecture with random weights
(nothing downloads) and loaded through the path a user's ``--sam-checkpoint FILE`` takes; the
frames are 854x480 (davis-mini's blackswan when ``../shared/data`` is there, else noise).

    python benchmarks/bench_prompts.py                 # vit_b on the CPU, 3 frames x 5 clicks
    python benchmarks/bench_prompts.py --device cuda --sam vit_h
    python benchmarks/bench_prompts.py --smoke         # the tiny test SAM: checks the script
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pdmtrack import Tracker, TrackSettings
from pdmtrack.sam.loading import OFFICIAL_ARCHITECTURES
from pdmtrack.testing.sam import TINY_SAM, build_tiny_sam

DAVIS_FRAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis-mini" / "JPEGImages" / "480p" / "blackswan"


def write_frames(folder: Path, count: int) -> Path:
    """``count`` 854x480 frames: davis-mini's blackswan, else seeded noise."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        source = DAVIS_FRAMES / f"{index:05d}.jpg"
        frame = Image.open(source) if source.exists() else Image.fromarray(rng.integers(0, 255, (480, 854, 3), dtype=np.uint8))
        frame.save(folder / f"{index:05d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", default="vit_b", choices=sorted(OFFICIAL_ARCHITECTURES), help="SAM architecture (random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=3, help="frames clicked (first clicks timed)")
    parser.add_argument("--clicks", type=int, default=5, help="later clicks per frame (decoder-only clicks timed)")
    parser.add_argument("--smoke", action="store_true", help="the tiny test SAM instead of the full architecture")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as scratch:
        arch = TINY_SAM if args.smoke else OFFICIAL_ARCHITECTURES[args.sam]
        checkpoint = build_tiny_sam(Path(scratch) / "sam.safetensors", arch=arch)
        folder = write_frames(Path(scratch) / "clip", args.frames)
        settings = TrackSettings.from_options(sam=args.sam, sam_checkpoint=checkpoint, device=args.device)
        began = time.perf_counter()
        tracker = Tracker(settings, features=lambda frames: None)  # clicks need no features
        print(
            f"SAM {'tiny (smoke)' if args.smoke else args.sam}, random weights, on {tracker.device}: loaded in {time.perf_counter() - began:.1f} s"
        )
        state = tracker.init_state(folder)
        rng = np.random.default_rng(1)
        first, later = [], []
        for frame_idx in range(args.frames):
            for click in range(1 + args.clicks):
                point = (float(rng.uniform(0, state.width)), float(rng.uniform(0, state.height)))
                if tracker.device.type == "cuda":
                    torch.cuda.synchronize()
                began = time.perf_counter()
                tracker.add_points(state, frame_idx, obj_id=1, points=[point], labels=[int(click == 0 or rng.random() < 0.5)])
                if tracker.device.type == "cuda":
                    torch.cuda.synchronize()
                (first if click == 0 else later).append(time.perf_counter() - began)
    first_ms, later_ms = 1000 * statistics.median(first), 1000 * statistics.median(later)
    print(f"{state.width}x{state.height} frames, {args.frames} frames x (1 + {args.clicks}) clicks")
    print(
        f"first click on a frame (encoder + decoder): median {first_ms:.1f} ms (min {1000 * min(first):.1f}, max {1000 * max(first):.1f})"
    )
    print(
        f"later click, same frame (decoder only):     median {later_ms:.1f} ms (min {1000 * min(later):.1f}, max {1000 * max(later):.1f})"
    )
    print(f"ratio first / later: {first_ms / later_ms:.1f}x")


if __name__ == "__main__":
    main()
