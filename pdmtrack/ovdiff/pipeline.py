"""OVDiff end to end: factories over loaded models, and ``segment-ov``'s image loop.

The diffusion parts and SAM are loaded once (``pdmtrack.tracking.models``) and shared by the prototype
builder and the target features; ``segment_images`` writes, per image, a palette PNG of class
ids (0 background, k the k-th class given), an overlay, and ``legend.json`` once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.features.model import DiffusionParts
from pdmtrack.features.types import FeatureSource
from pdmtrack.io.files import atomic_path, atomic_write_text, ensure_writable_folder
from pdmtrack.io.images import output_stems, read_rgb
from pdmtrack.io.masks import DAVIS_PALETTE
from pdmtrack.io.writers import blend_labels, write_palette_png
from pdmtrack.ovdiff.builder import BuildReport, PrototypeBuilder
from pdmtrack.ovdiff.clip_filter import ClipFilter
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig, check_classes
from pdmtrack.ovdiff.prototypes import feature_maps
from pdmtrack.ovdiff.segment import OVSegmenter, Segmentation
from pdmtrack.ovdiff.store import PrototypeStore, check_store_folder
from pdmtrack.sam.refine import SamRefiner
from pdmtrack.tracking.models import check_feature_cache, feature_source, load_diffusion, load_refiner

LEGEND = "legend.json"


def prototype_builder(
    parts: DiffusionParts,
    settings: TrackSettings,
    config: PrototypeConfig,
    refiner: SamRefiner | None,
    prototypes_dir: Path | None,
    support_dir: Path | None = None,
    store_flag: str = "--prototypes",
) -> PrototypeBuilder:
    """A builder over ``parts`` whose store is ``prototypes_dir`` (None: the default folder),
    which the user gave as ``store_flag``."""
    store = PrototypeStore(prototypes_dir, parts.fingerprint, store_flag)
    return PrototypeBuilder(parts, settings, config, store, refiner, support_dir)


def ov_segmenter(builder: PrototypeBuilder, names: list[str], config: SegmentConfig) -> OVSegmenter:
    """The segmenter of ``names`` (prototypes loaded or built; CLIP loaded when it will be used)."""
    clip = None
    if config.clip is not None and len(names) >= config.clip_min_classes:
        clip = ClipFilter(config.clip, builder.device, config.clip_min_prob)
    return OVSegmenter(names, builder.prototypes(names), config, clip, builder.device)


def _check_folders(prototypes_dir: Path | None, support_dir: Path | None, store_flag: str) -> None:
    """The prototype folder (given as ``store_flag``) and the support folder, before any model loads."""
    if prototypes_dir is not None:
        check_store_folder(Path(prototypes_dir).expanduser(), store_flag)
    if support_dir is not None:
        ensure_writable_folder(support_dir, flag="--support-dir")


def build_prototypes(
    names: list[str],
    settings: TrackSettings,
    config: PrototypeConfig,
    prototypes_dir: Path | None = None,
    support_dir: Path | None = None,
    rebuild: bool = False,
) -> PrototypeBuilder:
    """Load the models once and build (or find stored) prototypes of ``names`` in
    ``prototypes_dir`` (the command's ``-o``); the builder (its ``report`` says what was
    built, its ``store.root`` where)."""
    names = check_classes(names)
    _check_folders(prototypes_dir, support_dir, "-o")
    refiner = load_refiner(settings)
    parts = load_diffusion(settings)
    builder = prototype_builder(parts, settings, config, refiner, prototypes_dir, support_dir, "-o")
    builder.prototypes(names, rebuild)
    return builder


@dataclass
class OVDiffRun:
    """Everything segmenting needs, built once: the builder, the segmenter, the feature source."""

    builder: PrototypeBuilder
    segmenter: OVSegmenter
    source: FeatureSource
    config: PrototypeConfig

    def segment(self, image: np.ndarray) -> Segmentation:
        """Segment one (H, W, 3) uint8 image (features with the empty prompt, cached)."""
        maps = feature_maps(self.source(np.stack([image])), self.config.feature)[0]
        return self.segmenter(image, maps)


def open_ovdiff(
    names: list[str],
    settings: TrackSettings,
    prototypes: PrototypeConfig,
    segment: SegmentConfig,
    prototypes_dir: Path | None = None,
    support_dir: Path | None = None,
) -> OVDiffRun:
    """Load SAM and the diffusion model once, then prototypes (stored or built) of ``names``."""
    names = check_classes(names)
    check_feature_cache(settings)  # before SAM (its checkpoints go beside the cache) and the big load
    _check_folders(prototypes_dir, support_dir, "--prototypes")
    refiner = load_refiner(settings)
    parts = load_diffusion(settings)
    builder = prototype_builder(parts, settings, prototypes, refiner, prototypes_dir, support_dir)
    return OVDiffRun(builder, ov_segmenter(builder, names, segment), feature_source(parts, settings, []), prototypes)


@dataclass
class SegmentSummary:
    """What ``segment_images`` did."""

    images: int
    seconds: float
    segment_seconds: float  # features + nearest-prototype search + writing, without setup
    out_dir: Path
    build: BuildReport = field(default_factory=BuildReport)

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.segment_seconds, 1e-9)


def segment_images(
    images: list[Path],
    out_dir: Path,
    names: list[str],
    *,
    settings: TrackSettings,
    prototypes: PrototypeConfig,
    segment: SegmentConfig,
    prototypes_dir: Path | None = None,
    support_dir: Path | None = None,
) -> SegmentSummary:
    """Segment every image into the background and ``names``; write the outputs in ``out_dir``,
    named by :func:`output_stems` (images of different folders may share a file name)."""
    began = time.perf_counter()
    names = check_classes(names)
    if not images:
        raise InputError("IMAGE", "give at least one image")
    for path in images:
        if not Path(path).is_file():
            raise InputError(path, "image not found")
    stems = output_stems(images)
    inputs = {Path(path).resolve() for path in images}
    for stem in stems:
        for output in (Path(out_dir) / f"{stem}.png", Path(out_dir) / f"{stem}_overlay.jpg"):
            if output.resolve() in inputs:
                raise InputError(out_dir, f"writing {output.name} there would overwrite an input; choose another -o")
    out_dir = ensure_writable_folder(out_dir)
    run = open_ovdiff(names, settings, prototypes, segment, prototypes_dir, support_dir)
    tick = time.perf_counter()
    write_legend(out_dir / LEGEND, names)
    for path, stem in tqdm(list(zip(images, stems)), desc="segment-ov", unit="image", disable=None):
        image = read_rgb(Path(path))
        result = run.segment(image)
        write_palette_png(out_dir / f"{stem}.png", result.labels)
        with atomic_path(out_dir / f"{stem}_overlay.jpg") as tmp:
            Image.fromarray(blend_labels(image, result.labels)).save(tmp, quality=90)
    done = time.perf_counter()
    return SegmentSummary(len(images), done - began, done - tick, out_dir, run.builder.report)


def write_legend(path: Path, names: list[str]) -> None:
    """``legend.json``: id -> class name and its palette colour (0 is the background)."""
    entries = [{"id": i, "class": name, "color": DAVIS_PALETTE[i].tolist()} for i, name in enumerate(["background", *names])]
    atomic_write_text(path, json.dumps(entries, indent=2) + "\n")
