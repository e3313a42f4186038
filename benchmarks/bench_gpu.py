"""GPU throughput of pdmtrack, measured against the GPU's own matrix peak.

Builds, with random weights (nothing is downloaded; the configs are in published_configs.py):
a full-size SDXL diffusers folder (UNet, VAE, both CLIP text encoders; the tokenizers are the
tiny byte-level ones, which only changes how the prompt splits into tokens), SAM vit_b and
SAM 2.1 hiera-base-plus / hiera-tiny. Generates an 854x480 clip (two textured squares crossing
a noisy background). Then, in fp16 (``--dtype bf16`` for bf16):

1. the matrix peak: TFLOP/s of a large matmul, the yardstick for the rest;
2. the UNet alone: one full pass at the clip's input size (FLOPs counted by torch's
   FlopCounterMode), TFLOP/s and its fraction of the peak, per batch size;
3. feature extraction alone (VAE + inversion + hooked pass) per mode: frames/s and TFLOP/s;
4. end to end, decode to PNGs and overlay on disk, per mode and refiner: frames/s, the share
   of each stage, the share of a frame's time that feature extraction alone accounts for,
   peak GPU memory, and the model load time from the local folder.

Without CUDA it prints one line and exits 0. ``--smoke`` runs every step on the CPU with the
tiny models and a small clip: a check of this script, not a measurement.

    python benchmarks/bench_gpu.py                              # noise + aidi, --sam none/vit_b/sam2.1
    python benchmarks/bench_gpu.py --frames 300 --modes noise --refiners vit_b
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

MODES = ("noise", "aidi")
REFINERS = ("none", "vit_b", "sam2.1-hiera-base-plus", "sam2.1-hiera-tiny")
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class Bench:
    """Where and how the benchmark runs."""

    device: torch.device
    dtype: torch.dtype
    work: Path
    smoke: bool
    height: int
    width: int


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=240, help="frames of the generated clip")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--refiners", nargs="+", choices=REFINERS, default=list(REFINERS[:3]))
    parser.add_argument("--batch-size", default="auto", help="frames per feature batch, or auto")
    parser.add_argument("--unet-batches", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    parser.add_argument("--size", type=int, default=512, help="short side of the model input")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (pdmtrack --compile)")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script only")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("bench_gpu: no CUDA device on this machine; nothing measured (run it where torch.cuda.is_available())")
        return 0
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as scratch:
        height, width = (120, 160) if args.smoke else (480, 854)
        bench = Bench(device, dtype, Path(scratch), args.smoke, height, width)
        run(bench, args)
    return 0


def run(bench: Bench, args: argparse.Namespace) -> None:
    from bench_propagate import write_clip  # beside this script

    size = 64 if bench.smoke else args.size
    name = "CPU (smoke run: tiny models, nothing measured)" if bench.smoke else torch.cuda.get_device_name(bench.device)
    print(f"== {name}, {DTYPE_NAMES[bench.dtype]}, torch {torch.__version__}")
    began = time.perf_counter()
    model = build_sdxl_folder(bench)
    refiners = {r: build_refiner_checkpoint(bench, r) for r in args.refiners if r != "none"}
    clip = bench.work / "clip.mp4"
    first_mask = write_clip(clip, args.frames, bench.height, bench.width)
    mask = bench.work / "first.png"
    save_mask(first_mask, mask)
    print(f"built the random-weight models and a {args.frames}-frame {bench.width}x{bench.height} clip "
          f"in {time.perf_counter() - began:.0f} s")  # fmt: skip

    peak = matmul_peak(bench)
    print(f"matrix peak ({DTYPE_NAMES[bench.dtype]} matmul, n = {2048 if bench.smoke else 8192}): {peak:.0f} TFLOP/s")
    parts, load_seconds = timed(lambda: load_parts(bench, model, args.compile))
    print(f"SDXL load from the local folder (UNet, VAE, 2 text encoders; files in the page cache): {load_seconds:.1f} s")
    unet_table(bench, parts, size, args.unet_batches, peak)
    feature_flops = features_table(bench, parts, size, args.modes, peak)
    del parts
    end_to_end_table(bench, args, model, refiners, clip, mask, size, feature_flops)


# ----------------------------------------------------------------------------- building


def build_sdxl_folder(bench: Bench) -> Path:
    """A diffusers folder: the tiny pipeline's tokenizers and scheduler, and (unless smoke)
    full-size random UNet, VAE and text encoders saved in place of the tiny ones."""
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from published_configs import SDXL_TEXT_ENCODER_2_CONFIG, SDXL_TEXT_ENCODER_CONFIG, SDXL_UNET_CONFIG, SDXL_VAE_CONFIG
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pdmtrack.testing.diffusion import build_tiny_pipeline

    folder = build_tiny_pipeline(bench.work / "sdxl")
    if bench.smoke:
        return folder
    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "unet": lambda: UNet2DConditionModel(**SDXL_UNET_CONFIG),
        "vae": lambda: AutoencoderKL(**SDXL_VAE_CONFIG),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODER_CONFIG)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2_CONFIG)),
    }
    for component, build in builders.items():
        shutil.rmtree(folder / component)
        with torch.device(bench.device):
            module = build()
        stored = torch.float32 if component == "vae" else bench.dtype  # the VAE is upcast anyway
        module.to(stored).save_pretrained(folder / component, safe_serialization=True)
        del module
        torch.cuda.empty_cache()
    return folder


def build_refiner_checkpoint(bench: Bench, refiner: str) -> Path:
    """A random-weight checkpoint of ``refiner`` (tiny ones for the smoke run)."""
    from published_configs import sam21_config

    from pdmtrack.sam.loading import OFFICIAL_ARCHITECTURES
    from pdmtrack.testing.sam import build_tiny_sam
    from pdmtrack.testing.sam2 import build_tiny_sam2

    if refiner == "vit_b":
        path = bench.work / "sam_vit_b.safetensors"
        return build_tiny_sam(path) if bench.smoke else build_tiny_sam(path, arch=OFFICIAL_ARCHITECTURES["vit_b"])
    folder = bench.work / refiner
    return build_tiny_sam2(folder) if bench.smoke else build_tiny_sam2(folder, config=sam21_config(refiner))


def save_mask(labels, path: Path) -> None:
    from pdmtrack.io.writers import write_palette_png

    write_palette_png(path, labels)


def load_parts(bench: Bench, model: Path, compile_unet: bool):
    from pdmtrack.config import FeatureConfig, RuntimeConfig, TrackSettings
    from pdmtrack.tracking.models import load_models

    runtime = RuntimeConfig(device=bench.device.type, dtype=DTYPE_NAMES[bench.dtype], compile=compile_unet)
    return load_models(TrackSettings(features=FeatureConfig(model=str(model)), runtime=runtime), sam=False).parts


# ----------------------------------------------------------------------------- measuring


def synchronize(bench: Bench) -> None:
    if bench.device.type == "cuda":
        torch.cuda.synchronize(bench.device)


def timed(work: Callable, bench: Bench | None = None):
    """(result, seconds) of ``work()``, synchronised with the GPU at both ends."""
    if bench is not None:
        synchronize(bench)
    began = time.perf_counter()
    result = work()
    if bench is not None:
        synchronize(bench)
    return result, time.perf_counter() - began


def count_flops(work: Callable) -> int:
    """Floating-point operations of ``work()`` as torch's FlopCounterMode counts them (matmuls,
    convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def matmul_peak(bench: Bench) -> float:
    """TFLOP/s of a square matmul in the benchmark's dtype (2048 on the smoke run)."""
    n, repeats = (2048, 2) if bench.smoke else (8192, 20)
    a = torch.randn(n, n, device=bench.device, dtype=bench.dtype)
    b = torch.randn(n, n, device=bench.device, dtype=bench.dtype)
    for _ in range(3):
        a @ b
    _, seconds = timed(lambda: [a @ b for _ in range(repeats)], bench)
    return 2 * n**3 * repeats / seconds / 1e12


def unet_inputs(bench: Bench, parts, size: int, batch: int) -> dict:
    """Inputs of one SDXL UNet pass on ``batch`` latents of an 854x480 frame at ``size``."""
    from pdmtrack.config import FeatureConfig
    from pdmtrack.features.extractor import FeatureExtractor

    extractor = FeatureExtractor(parts, FeatureConfig(model="bench", size=size), ["dog"])
    height, width = extractor.input_size(bench.height, bench.width)
    latents = torch.randn(batch, 4, height // 8, width // 8, device=bench.device, dtype=bench.dtype)
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=bench.device, dtype=bench.dtype)
    return {
        "sample": latents,
        "timestep": torch.tensor(249, device=bench.device),
        "encoder_hidden_states": extractor.prompt_embeds.expand(batch, -1, -1),
        "added_cond_kwargs": {"text_embeds": extractor.pooled_embeds.expand(batch, -1), "time_ids": time_ids.expand(batch, -1)},
    }


@torch.inference_mode()
def unet_table(bench: Bench, parts, size: int, batches: list[int], peak: float) -> None:
    """TFLOP/s of full UNet passes, per batch size."""
    print(
        f"\nUNet alone, one full pass per frame at short side {size} ({sum(p.numel() for p in parts.unet.parameters()) / 1e9:.2f} B params)"
    )
    print(f"{'batch':>5} {'ms/frame':>9} {'TFLOP/frame':>12} {'TFLOP/s':>8} {'of peak':>8}")
    for batch in batches:
        inputs = unet_inputs(bench, parts, size, batch)
        flops = count_flops(lambda: parts.unet(**inputs))
        parts.unet(**inputs)  # warm-up (kernels, allocator)
        repeats = 1 if bench.smoke else 5
        _, seconds = timed(lambda: [parts.unet(**inputs) for _ in range(repeats)], bench)
        rate = flops * repeats / seconds / 1e12
        print(f"{batch:5d} {1000 * seconds / repeats / batch:9.1f} {flops / batch / 1e12:12.2f} {rate:8.1f} {rate / peak:8.1%}")


@torch.inference_mode()
def features_table(bench: Bench, parts, size: int, modes: list[str], peak: float) -> dict[str, float]:
    """Feature extraction alone per mode on batches of generated frames: frames/s and TFLOP/s.
    Returns the FLOPs per frame of each mode."""
    import numpy as np

    from pdmtrack.config import FeatureConfig
    from pdmtrack.features.extractor import FeatureExtractor

    batch = 2 if bench.smoke else 8
    frames = np.random.default_rng(0).integers(0, 256, (batch, bench.height, bench.width, 3), dtype=np.uint8)
    print(f"\nfeature extraction alone (VAE, inversion, hooked pass), batch {batch}")
    print(f"{'mode':6} {'frames/s':>9} {'ms/frame':>9} {'TFLOP/frame':>12} {'TFLOP/s':>8} {'of peak':>8}")
    flops_per_frame = {}
    for mode in modes:
        extractor = FeatureExtractor(parts, FeatureConfig(model="bench", size=size, inversion=mode), ["dog"])
        _, first = timed(lambda: extractor(frames), bench)  # with --compile: the compile time
        flops_per_frame[mode] = count_flops(lambda: extractor(frames)) / batch
        repeats = 1 if bench.smoke else 3
        _, seconds = timed(lambda: [extractor(frames) for _ in range(repeats)], bench)
        fps = batch * repeats / seconds
        rate = flops_per_frame[mode] * fps / 1e12
        print(f"{mode:6} {fps:9.2f} {1000 / fps:9.1f} {flops_per_frame[mode] / 1e12:12.2f} {rate:8.1f} {rate / peak:8.1%}"
              f"   (first batch {first:.1f} s)")  # fmt: skip
    return flops_per_frame


def end_to_end_table(
    bench: Bench, args: argparse.Namespace, model: Path, refiners: dict[str, Path], clip: Path, mask: Path,
    size: int, feature_flops: dict[str, float],
) -> None:  # fmt: skip
    """Track the clip to disk per mode and refiner (a Tracker loaded for each); a line each.
    Stage shares are each stage's busy time over the wall time (stages overlap: writing and
    feature extraction run in their own threads)."""
    from pdmtrack.config import FeatureConfig, RuntimeConfig, SamConfig, TrackSettings
    from pdmtrack.runs.video_folder import RUN_STAGES, plan_video, track_to_folder
    from pdmtrack.tracking.tracker import Tracker

    print(f"\nend to end: {args.frames} frames {bench.width}x{bench.height} -> PNGs + overlay.mp4 on disk, batch {args.batch_size}")
    for mode in args.modes:
        for refiner in ["none", *refiners]:
            settings = TrackSettings(
                features=FeatureConfig(model=str(model), size=size, inversion=mode),  # type: ignore[arg-type]
                sam=SamConfig(model_type=refiner, checkpoint=refiners.get(refiner)),  # type: ignore[arg-type]
                runtime=RuntimeConfig(
                    device=bench.device.type,
                    dtype=DTYPE_NAMES[bench.dtype],
                    batch_size=args.batch_size,
                    use_cache=False,
                    compile=args.compile,
                ),
            )
            if bench.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(bench.device)
            plan = plan_video(clip, bench.work / f"out-{mode}-{refiner}", masks={0: mask}, classes=["dog"])
            tracker, load_seconds = timed(lambda: Tracker(settings), bench)
            summary = track_to_folder(tracker, plan)
            fps = summary.frames / summary.seconds
            shares = ", ".join(f"{s} {summary.stage_seconds.get(s, 0.0) / summary.seconds:.0%}" for s in RUN_STAGES)
            memory = torch.cuda.max_memory_allocated(bench.device) / 2**30 if bench.device.type == "cuda" else float("nan")
            print(f"{mode:6} --sam {refiner:23} {fps:7.2f} frames/s ({1000 / fps:.1f} ms/frame), feature work at "
                  f"{feature_flops[mode] * fps / 1e12:.1f} TFLOP/s; load {load_seconds:.1f} s; peak GPU {memory:.1f} GiB; "
                  f"busy/wall: {shares}")  # fmt: skip
            del tracker


if __name__ == "__main__":
    sys.exit(main())
