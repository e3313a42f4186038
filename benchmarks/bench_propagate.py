"""End-to-end throughput and peak memory of ``Tracker`` + ``track_to_folder`` on generated clips.

Builds the tiny random-weight SDXL-shaped model, encodes a synthetic clip (textured squares
moving over a noisy background) of each requested length as an mp4, and tracks it with
``--sam none`` and the feature cache off, each length in a fresh process so its peak RSS is
its own. Prints frames/s, peak RSS and the share of every stage (decode, features,
matching/memory, refinement, writing), then the cost of one memory read at the real SDXL
grid (32x56 cells, 640 channels, 28 context frames) for comparison with the UNet.

    python benchmarks/bench_propagate.py                      # 300 and 1200 frames, size 64, aidi
    python benchmarks/bench_propagate.py --frames 100 --size 128 --inversion noise
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from pdmtrack.config import FeatureConfig, MemoryConfig, RuntimeConfig, SamConfig, TrackSettings
from pdmtrack.runs.video_folder import RUN_STAGES, plan_video, track_to_folder
from pdmtrack.testing.diffusion import build_tiny_pipeline
from pdmtrack.tracking.memory import ContextMemory
from pdmtrack.tracking.tracker import Tracker


def write_clip(path: Path, frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Encode a clip of two textured squares crossing; return frame 0's mask (ids 1, 2)."""
    rng = np.random.default_rng(seed)
    side = height // 4
    rows, cols = np.mgrid[0:side, 0:side]
    patches = [
        np.where(((rows // 4) % 2)[..., None] == 0, [230, 60, 40], [250, 210, 40]),
        np.where(((cols // 4) % 2)[..., None] == 0, [30, 70, 220], [60, 220, 230]),
    ]
    first_mask = np.zeros((height, width), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for t in range(frames):
            frame = np.clip(rng.normal(100, 8, (height, width, 3)), 0, 255)
            phase = (t % 96) / 96
            for k, patch in enumerate(patches):
                left = int((width - side) * (phase if k == 0 else 1 - phase))
                top = height // 4 + k * side // 2
                frame[top : top + side, left : left + side] = patch
                if t == 0:
                    first_mask[top : top + side, left : left + side] = k + 1
            video_frame = av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return first_mask


def run_once(frames: int, size: int, inversion: str, workdir: Path) -> dict:
    """Track one generated clip of ``frames`` frames; timings and peak RSS of this process."""
    from PIL import Image

    model = workdir / "tiny-sdxl"
    if not model.exists():
        build_tiny_pipeline(model, "sdxl")
    clip = workdir / f"clip{frames}.mp4"
    mask = workdir / f"clip{frames}_mask.png"
    Image.fromarray(write_clip(clip, frames, height=120, width=160)).save(mask)
    settings = TrackSettings(
        features=FeatureConfig(model=str(model), size=size, inversion=inversion),  # type: ignore[arg-type]
        sam=SamConfig(model_type="none"),
        runtime=RuntimeConfig(device="auto", batch_size=8, use_cache=False),
    )
    began = time.perf_counter()
    plan = plan_video(clip, workdir / f"out{frames}", masks={0: mask}, classes=["dog"])
    tracker = Tracker(settings)
    setup = time.perf_counter() - began
    summary = track_to_folder(tracker, plan)
    return {
        "frames": summary.frames,
        "seconds": setup + summary.seconds,
        "fps": summary.frames / (setup + summary.seconds),
        "stages": {"setup": setup, **summary.stage_seconds},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def memory_read_seconds(device: torch.device, repeats: int = 3) -> float:
    """Seconds per ``ContextMemory.read`` at SDXL's 32x56 grid, 640 channels, full memory."""
    grid, channels = (32, 56), 640
    config = MemoryConfig()
    cells = grid[0] * grid[1]
    memory = ContextMemory(config, grid, channels, 3, device)
    memory.add_keyframe(torch.randn(channels, cells, device=device), torch.rand(3, cells, device=device))
    for _ in range(config.context):
        memory.write(torch.randn(channels, cells, device=device), torch.rand(3, cells, device=device))
    query = torch.randn(channels, cells, device=device)
    memory.read(query)
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(repeats):
        memory.read(query)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - began) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[300, 1200])
    parser.add_argument("--size", type=int, default=64, help="model input short side (multiple of 64)")
    parser.add_argument("--inversion", default="aidi", choices=["aidi", "ddim", "noise"])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(run_once(args.frames[0], args.size, args.inversion, args.workdir)))
        return
    with tempfile.TemporaryDirectory(prefix="bench_propagate_") as scratch:
        run_all(args, args.workdir or Path(scratch))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"memory read at the SDXL grid (32x56 cells, 640 ch, 1 + 28 frames) on {device}: "
          f"{1000 * memory_read_seconds(device):.1f} ms/frame")  # fmt: skip


def run_all(args: argparse.Namespace, workdir: Path) -> None:
    """Each clip length in its own process (so its peak RSS is its own); print a line each."""
    for frames in args.frames:
        command = [sys.executable, __file__, "--single", "--frames", str(frames), "--size", str(args.size),
                   "--inversion", args.inversion, "--workdir", str(workdir)]  # fmt: skip
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        stages = result["stages"]
        tracking = result["seconds"] - stages["setup"]  # wall time: writing overlaps the other stages
        shares = ", ".join(f"{s} {100 * stages[s] / tracking:.1f}%" for s in RUN_STAGES)
        print(
            f"{frames} frames (120x160, size {args.size}, {args.inversion}, --sam none): "
            f"{result['fps']:.2f} frames/s overall ({result['seconds']:.1f} s, setup {stages['setup']:.1f} s), "
            f"{frames / tracking:.2f} frames/s after setup, peak RSS {result['peak_rss_mb']:.0f} MB; "
            f"busy time per stage / wall time after setup: {shares}",
            flush=True,
        )


if __name__ == "__main__":
    main()
