"""OVDiff throughput: support sampling, prototype building per class, segmentation.

Builds the tiny random-weight SDXL-shaped model (or takes ``--model``), then measures:

1. support images/s: sampling ``--support`` images per class at ``--support-size`` with 1
   and 4 steps (the class-token attention is captured on the way);
2. prototype build time per class (sampling + fg/bg split + features + k-means + store),
   with the sampling share, and the time to serve the same classes from the store;
3. segmentation images/s on 480x854 frames (features with the cache off + nearest-prototype
   search + argmax), for the built classes and for 20, CLIP pre-filter off;
4. the nearest-prototype search alone at the real SDXL grid (32x56 cells, 640 channels)
   with 20 classes of 1 + 64 + 32 foreground and 64 + 32 background prototypes.

    python benchmarks/bench_prototypes.py                  # tiny model, CPU or GPU (auto)
    python benchmarks/bench_prototypes.py --model stabilityai/sdxl-turbo --support 64 \\
        --support-size 512 --size 512 --device cuda
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.config import TrackSettings
from pdmtrack.device import resolve_device
from pdmtrack.features.extractor import FeatureExtractor
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig
from pdmtrack.ovdiff.pipeline import OVDiffPipeline, prototype_builder
from pdmtrack.ovdiff.prototypes import ClassPrototypes
from pdmtrack.ovdiff.sampling import sample_support
from pdmtrack.ovdiff.segment import OVSegmenter
from pdmtrack.testing.diffusion import build_tiny_pipeline
from pdmtrack.tracking.models import Models, load_models

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor",
)  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_sampling(parts, settings: TrackSettings, config: PrototypeConfig, device: torch.device) -> None:
    """Support images/s at 1 and 4 steps (one warm-up image first)."""
    prompt = replace(settings.features, prompt_template=config.support_prompt)
    prompter = FeatureExtractor(parts, prompt, ["dog"])
    sample_support(prompter, 1, config.support_size, 1, 0, 1)
    for steps in (1, 4):
        _sync(device)
        tick = time.perf_counter()
        sample_support(prompter, config.num_support, config.support_size, steps, 0, settings.runtime.batch_size)
        _sync(device)
        seconds = time.perf_counter() - tick
        print(f"sampling, {steps} step(s): {config.num_support / seconds:.2f} support images/s ({seconds:.2f} s for {config.num_support})")


def bench_build(models: Models, config: PrototypeConfig, store: Path, classes: int) -> None:
    """Build ``classes`` classes, then serve them from the store."""
    names = list(CLASSES[:classes])
    builder = prototype_builder(models, config, store)
    builder.prototypes(names)
    report = builder.report
    per_class = [report.class_seconds[name] for name in names]
    sampling = report.sampling_seconds / len(names)
    print(
        f"prototype build: {np.mean(per_class):.2f} s per class (min {min(per_class):.2f}, max {max(per_class):.2f}; "
        f"{config.num_support} support images, {config.steps} step(s)); sampling {sampling:.2f} s of it "
        f"({100 * sampling / np.mean(per_class):.0f}%)"
    )
    tick = time.perf_counter()
    prototype_builder(models, config, store).prototypes(names)
    print(f"served from the store: {1000 * (time.perf_counter() - tick) / len(names):.1f} ms per class")


def bench_segment(models: Models, config: PrototypeConfig, store: Path, device: torch.device, images: int, classes: int) -> None:
    """Segmentation images/s of 480x854 frames (feature cache off) with the ``classes`` built
    classes, and with 20 classes (the built ones' prototypes repeated: the search cost does not
    depend on their values)."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (480, 854, 3), dtype=np.uint8) for _ in range(images)]
    settings = models.settings
    no_cache = replace(models, settings=replace(settings, runtime=replace(settings.runtime, use_cache=False)))
    builder = prototype_builder(models, config, store)
    built = builder.prototypes(list(CLASSES[:classes]))
    for count in (classes, len(CLASSES)):
        prototypes = [built[i % len(built)] for i in range(count)]
        segmenter = OVSegmenter(list(CLASSES[:count]), prototypes, SegmentConfig(clip=None), None, device)
        run = OVDiffPipeline(builder, segmenter, no_cache.pdm_source([]), config)
        run.segment(frames[0])  # warm-up
        _sync(device)
        tick = time.perf_counter()
        for frame in frames:
            run.segment(frame)
        _sync(device)
        seconds = time.perf_counter() - tick
        print(f"segmentation, {count} classes: {images / seconds:.2f} images/s ({images} frames 480x854)")


def bench_search(device: torch.device) -> None:
    """Nearest-prototype search + upsampling + argmax alone at the real SDXL grid."""
    generator = torch.Generator().manual_seed(0)

    def unit(rows: int) -> torch.Tensor:
        return F.normalize(torch.randn(rows, 640, generator=generator), dim=1)

    prototypes = [ClassPrototypes(unit(1), unit(64), unit(32), unit(64), unit(32)) for _ in CLASSES]
    segmenter = OVSegmenter(list(CLASSES), prototypes, SegmentConfig(clip=None), None, device)
    maps = torch.randn(640, 32, 56, generator=generator)
    image = np.zeros((480, 854, 3), np.uint8)
    segmenter(image, maps)
    _sync(device)
    tick = time.perf_counter()
    for _ in range(10):
        segmenter(image, maps)
    _sync(device)
    print(f"search alone, 20 classes at 32x56x640: {100 * (time.perf_counter() - tick):.1f} ms per image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="diffusers folder or hub id (default: a tiny random SDXL)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=64, help="feature input short side")
    parser.add_argument("--support", type=int, default=8, help="support images per class")
    parser.add_argument("--support-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1, help="sampling steps of the build benchmark")
    parser.add_argument("--classes", type=int, default=3, help="classes built in the build benchmark")
    parser.add_argument("--images", type=int, default=8, help="frames segmented per class count")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--inversion", default="aidi")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = args.model or str(build_tiny_pipeline(workdir / "tiny-sdxl", "sdxl"))
        settings = TrackSettings.from_options(
            model=model, size=args.size, inversion=args.inversion, sam="none", device=args.device,
            batch_size=args.batch_size, cache_dir=workdir / "cache",
        )  # fmt: skip
        device = resolve_device(args.device)
        config = PrototypeConfig(num_support=args.support, steps=args.steps, support_size=args.support_size)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"device {device}, torch threads {torch.get_num_threads()}, load average {load}, model {'tiny random SDXL' if not args.model else model}"
        )
        models = load_models(settings, sam=False)
        bench_sampling(models.parts, settings, config, device)
        bench_build(models, config, workdir / "protos", args.classes)
        bench_segment(models, config, workdir / "protos", device, args.images, args.classes)
        bench_search(device)


if __name__ == "__main__":
    main()
