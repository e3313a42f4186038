"""Throughput and peak memory of PDM feature extraction (resize, VAE, inversion, hooked UNet).

1. The tiny random-weight SDXL-shaped model on CPU: frames/s and peak RSS for every
   inversion mode and batch size (each configuration in a fresh process, so its peak RSS is
   its own), then a first and a second run through the feature cache.
2. With CUDA: the same grid with a full-size SDXL UNet and VAE built from SDXL's configs with
   random weights (the cost per frame is the real one; nothing is downloaded), fp16, peak
   GPU memory from torch.
3. ``--full-unet-cpu``: that full-size model on CPU (fp32) for one frame per mode, to know
   the real CPU cost per frame.

Frames are random 854x480 images (DAVIS size), resized to ``--size`` on the short side.

    python benchmarks/bench_features.py                         # tiny on CPU (+ CUDA if present)
    python benchmarks/bench_features.py --full-unet-cpu --cpu-modes noise aidi
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

import numpy as np
import torch
from published_configs import SDXL_UNET_CONFIG, SDXL_VAE_CONFIG  # beside this script

from pdmtrack.config import FeatureConfig
from pdmtrack.features.extractor import FeatureExtractor
from pdmtrack.features.inversion import unet_passes
from pdmtrack.features.model import DiffusionParts, load_diffusion_parts
from pdmtrack.testing.diffusion import build_tiny_pipeline, tiny_text_encoder

MODES = ("aidi", "ddim", "noise")


def full_size_parts(tiny_folder: Path, device: torch.device, dtype: torch.dtype) -> DiffusionParts:
    """SDXL-sized UNet and VAE with random weights; small text encoders of SDXL's widths
    (768 + 1280 = 2048 context, 1280 pooled), which run once per extractor."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    tiny = load_diffusion_parts(FeatureConfig(model=str(tiny_folder)), device, dtype)
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype  # force_upcast, as the loader does
    with torch.device(device):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG).eval().requires_grad_(False)
        vae = AutoencoderKL(**SDXL_VAE_CONFIG).eval().requires_grad_(False)
    if dtype != torch.float32:  # built in fp32 (random init), then cast like a loaded checkpoint
        unet = unet.to(dtype)
    if vae_dtype != torch.float32:
        vae = vae.to(vae_dtype)
    encoders = [
        tiny_text_encoder(tiny.tokenizers[0], with_projection=False, hidden=768, projection=768, layers=1),
        tiny_text_encoder(tiny.tokenizers[1], with_projection=True, hidden=1280, projection=1280, layers=1),
    ]
    return DiffusionParts(
        unet=unet,
        vae=vae,
        tokenizers=tiny.tokenizers,
        text_encoders=[e.to(device=device, dtype=dtype).requires_grad_(False) for e in encoders],
        alphas_cumprod=tiny.alphas_cumprod,
        family="sdxl",
        fingerprint="bench:random-sdxl",
    )


def make_frames(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 480, 854, 3), dtype=np.uint8)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frames_per_second(source, frames: np.ndarray, batch: int, device: torch.device, warm_up: bool = True) -> float:
    """Frames/s of ``source`` over ``frames`` in chunks of ``batch`` (after one warm-up chunk)."""
    chunks = [frames[i : i + batch] for i in range(0, len(frames), batch)]
    if warm_up:
        source(chunks[0])
    synchronize(device)
    start = time.perf_counter()
    for chunk in chunks:
        source(chunk)
    synchronize(device)
    return len(frames) / (time.perf_counter() - start)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(spec: dict) -> dict:
    """One tiny-model CPU configuration (run in its own process for its own peak RSS)."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    parts = load_diffusion_parts(FeatureConfig(model=spec["model"]), torch.device("cpu"), torch.float32)
    config = FeatureConfig(model=spec["model"], size=spec["size"], inversion=spec["mode"])
    extractor = FeatureExtractor(parts, config, ["dog"])
    fps = frames_per_second(extractor, make_frames(spec["frames"]), spec["batch"], torch.device("cpu"))
    return {"fps": fps, "peak_rss_mib": peak_rss_mib()}


def run_tiny_grid(args: argparse.Namespace, tiny_folder: Path) -> None:
    threads = args.threads or torch.get_num_threads()
    print(f"\n== tiny SDXL-shaped model, CPU fp32, short side {args.size}, {args.frames} frames, {threads} threads")
    print(f"{'mode':6} {'passes':>6} {'batch':>5} {'frames/s':>9} {'peak RSS MiB':>13}")
    for mode in args.modes:
        for batch in args.batch_sizes:
            spec = {"model": str(tiny_folder), "size": args.size, "mode": mode, "batch": batch}
            spec |= {"frames": args.frames, "threads": args.threads}
            command = [sys.executable, __file__, "--worker", json.dumps(spec)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            passes = unet_passes(FeatureConfig(inversion=mode)) + 1
            print(f"{mode:6} {passes:6d} {batch:5d} {result['fps']:9.2f} {result['peak_rss_mib']:13.0f}")


def run_cache(parts: DiffusionParts, args: argparse.Namespace, device: torch.device, size: int) -> None:
    """First run (extract + write) and second run (served from the cache) of the same frames."""
    try:
        from pdmtrack.features.cache import CachedFeatureSource, FeatureCache
    except ImportError as err:
        print(f"cache: not measured ({err})")
        return
    extractor = FeatureExtractor(parts, FeatureConfig(model="bench", size=size), ["dog"])
    frames = make_frames(args.frames, seed=1)
    batch = max(args.batch_sizes)
    with tempfile.TemporaryDirectory() as cache_dir:
        source = CachedFeatureSource(extractor, FeatureCache(Path(cache_dir), extractor.fingerprint))
        first = frames_per_second(source, frames, batch, device, warm_up=False)
        second = frames_per_second(source, frames, batch, device, warm_up=False)
    print(
        f"cache (aidi, batch {batch}): first run {first:.2f} frames/s, second run {second:.1f} frames/s "
        f"({source.hits} hits, {source.misses} misses)"
    )


def run_full_cuda(args: argparse.Namespace, tiny_folder: Path) -> None:
    device = torch.device("cuda")
    parts = full_size_parts(tiny_folder, device, torch.float16)
    params = sum(p.numel() for p in parts.unet.parameters()) / 1e9
    print(
        f"\n== full-size SDXL UNet ({params:.2f} B params) + SDXL VAE, {torch.cuda.get_device_name(device)}, fp16, "
        f"short side {args.full_size}, {args.frames} frames"
    )
    print(f"{'mode':6} {'passes':>6} {'batch':>5} {'frames/s':>9} {'ms/frame':>9} {'peak GPU MiB':>13}")
    for mode in args.modes:
        extractor = FeatureExtractor(parts, FeatureConfig(model="bench", size=args.full_size, inversion=mode), ["dog"])
        for batch in args.batch_sizes:
            torch.cuda.reset_peak_memory_stats(device)
            fps = frames_per_second(extractor, make_frames(args.frames), batch, device)
            peak = torch.cuda.max_memory_allocated(device) / 2**20
            passes = unet_passes(FeatureConfig(inversion=mode)) + 1
            print(f"{mode:6} {passes:6d} {batch:5d} {fps:9.2f} {1000 / fps:9.1f} {peak:13.0f}")
    run_cache(parts, args, device, args.full_size)


def run_full_cpu(args: argparse.Namespace, tiny_folder: Path) -> None:
    device = torch.device("cpu")
    start = time.perf_counter()
    parts = full_size_parts(tiny_folder, device, torch.float32)
    print(
        f"\n== full-size SDXL UNet + VAE on CPU fp32 ({torch.get_num_threads()} threads), one 854x480 frame "
        f"at short side {args.full_size} (built in {time.perf_counter() - start:.0f} s)"
    )
    frame = make_frames(1)
    for mode in args.cpu_modes:
        extractor = FeatureExtractor(parts, FeatureConfig(model="bench", size=args.full_size, inversion=mode), ["dog"])
        seconds = 1 / frames_per_second(extractor, frame, 1, device, warm_up=False)
        passes = unet_passes(FeatureConfig(inversion=mode)) + 1
        print(f"{mode:6} {passes} UNet passes (the last one cut after the hooked block): {seconds:.1f} s/frame")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--frames", type=int, default=8, help="frames per measurement (after a warm-up batch)")
    parser.add_argument("--size", type=int, default=256, help="short side for the tiny model")
    parser.add_argument("--full-size", type=int, default=512, help="short side for the full-size UNet")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--full-unet-cpu", action="store_true", help="also run the full-size UNet on CPU, one frame")
    parser.add_argument("--cpu-modes", nargs="+", choices=MODES, default=["noise", "aidi"])
    parser.add_argument("--skip-tiny", action="store_true", help="skip the tiny-model grid")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tiny_folder = build_tiny_pipeline(Path(tmp) / "tiny-sdxl")
        if not args.skip_tiny:
            run_tiny_grid(args, tiny_folder)
            tiny = load_diffusion_parts(FeatureConfig(model=str(tiny_folder)), torch.device("cpu"), torch.float32)
            run_cache(tiny, args, torch.device("cpu"), args.size)
        if torch.cuda.is_available():
            run_full_cuda(args, tiny_folder)
        if args.full_unet_cpu:
            run_full_cpu(args, tiny_folder)


if __name__ == "__main__":
    main()
