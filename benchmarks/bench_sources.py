"""Cost per frame of each ``--features`` source, and of the composite ``--instance-prior pdm``.

Frames are random 854x480 images (DAVIS size). Every model is built from a config with
random weights (nothing is downloaded) and loaded through the path a user's local folder
takes (``load_vit`` / ``load_diffusion_parts``):

1. tiny shapes (the test fixtures): PDM (tiny SDXL, ``--size 512``, aidi), DIFT (ensemble 8),
   DINOv2 (``--dinov2-size 448``), DINOv3 ViT (``--dinov3-size`` small = 480), and the
   composite DINOv3 + PDM's prior;
2. full-size DINO shapes from the published architectures: DINOv2-B/14 at 448, DINOv3
   ViT-S/16, ViT-B/16, ViT-L/16 (the default ``--dinov3-model``) and ConvNeXt-T at 480.

Each figure is the median seconds per frame over ``--repeats`` timed batches after one
warm-up batch, with ``--batch`` frames per batch, on the device given (CPU by default).

    python benchmarks/bench_sources.py                  # both parts on CPU
    python benchmarks/bench_sources.py --skip-full      # tiny shapes only
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pdmtrack.config import FeatureConfig, RuntimeConfig, SamConfig, SourceConfig, TrackSettings
from pdmtrack.features.dino import DinoExtractor, load_vit
from pdmtrack.testing.diffusion import build_tiny_pipeline
from pdmtrack.testing.dino import build_tiny_dinov2, build_tiny_dinov3
from pdmtrack.tracking.models import load_models

FULL_DINO = {  # name: (config class, config arguments, size)
    "DINOv2-B/14 (facebook/dinov2-base shape)": (
        "Dinov2Config",
        {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
        448,
    ),
    "DINOv3 ViT-S/16": (
        "DINOv3ViTConfig",
        {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12, "num_attention_heads": 6},
        480,
    ),
    "DINOv3 ViT-B/16": (
        "DINOv3ViTConfig",
        {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
        480,
    ),
    "DINOv3 ViT-L/16 (default --dinov3-model shape)": (
        "DINOv3ViTConfig",
        {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16},
        480,
    ),
    "DINOv3 ConvNeXt-T": ("DINOv3ConvNextConfig", {"hidden_sizes": [96, 192, 384, 768], "depths": [3, 3, 9, 3]}, 480),
}
MODEL_CLASSES = {"Dinov2Config": "Dinov2Model", "DINOv3ViTConfig": "DINOv3ViTModel", "DINOv3ConvNextConfig": "DINOv3ConvNextModel"}


def seconds_per_frame(source: Callable[[np.ndarray], object], frames: np.ndarray, batch: int, repeats: int) -> float:
    """Median seconds per frame over ``repeats`` batches, after one warm-up batch."""
    source(frames[:batch])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        source(frames[:batch])
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times)


def tiny_sources(folder: Path, device: str) -> dict[str, Callable[[np.ndarray], object]]:
    """The uncached sources of ``load_models`` for each ``--features`` value, tiny models."""
    sdxl = build_tiny_pipeline(folder / "sdxl")
    dinov2 = build_tiny_dinov2(folder / "dinov2")
    dinov3 = build_tiny_dinov3(folder / "dinov3")

    def source(**options: object) -> Callable[[np.ndarray], object]:
        settings = TrackSettings(
            features=FeatureConfig(model=str(sdxl)),
            runtime=RuntimeConfig(device=device, use_cache=False),
            sam=SamConfig("none"),
            source=SourceConfig(dinov2_model=str(dinov2), dinov3_model=str(dinov3), **options),  # type: ignore[arg-type]
        )
        return load_models(settings, sam=False).feature_source([])

    return {
        "pdm (aidi, size 512)": source(),
        "dift (t 51, up-block 2, ensemble 8)": source(kind="dift"),
        "dinov2 (448)": source(kind="dinov2"),
        "dinov3 ViT (480)": source(kind="dinov3"),
        "dinov3 + --instance-prior pdm": source(kind="dinov3", instance_prior="pdm"),
    }


def full_dino(folder: Path, name: str, device: torch.device) -> Callable[[np.ndarray], object]:
    import transformers

    config_name, arguments, size = FULL_DINO[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**arguments)
    getattr(transformers, MODEL_CLASSES[config_name])(config).save_pretrained(folder / config_name)
    parts = load_vit(folder / config_name, device, torch.float32, "dinov3_model")
    return DinoExtractor(parts, size, "dinov3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    frames = np.random.default_rng(0).integers(0, 256, (max(4, args.batch), 480, 854, 3), dtype=np.uint8)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    with tempfile.TemporaryDirectory() as scratch:
        print("| source, tiny shapes | s/frame |\n|---|---|")
        for name, source in tiny_sources(Path(scratch), args.device).items():
            print(f"| {name} | {seconds_per_frame(source, frames, args.batch, args.repeats):.3f} |", flush=True)
        if args.skip_full:
            return
        print("| source, full-size shape, random weights | input | s/frame |\n|---|---|---|")
        for name in FULL_DINO:
            source = full_dino(Path(scratch), name, torch.device(args.device))
            grid = source(frames[:1]).grid
            row = f"| {name} | short side {FULL_DINO[name][2]}, {grid[0]}x{grid[1]} cells |"
            print(f"{row} {seconds_per_frame(source, frames, args.batch, args.repeats):.3f} |", flush=True)
            del source


if __name__ == "__main__":
    main()
