"""``segment-ov``: images segmented into the background and class names with OVDiff
(:func:`pdmtrack.ovdiff.pipeline.open_ovdiff`), written to a folder: one palette PNG of class
ids per image (0 background, k the k-th class given), an overlay, and ``legend.json`` once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.io.files import atomic_path, atomic_write_text, ensure_writable_folder
from pdmtrack.io.images import output_stems, read_rgb
from pdmtrack.io.masks import DAVIS_PALETTE
from pdmtrack.io.writers import blend_labels, write_palette_png
from pdmtrack.ovdiff.builder import BuildReport
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig, check_classes
from pdmtrack.ovdiff.pipeline import open_ovdiff
from pdmtrack.runs.record import OUTPUTS_LIST, check_replaceable, whole_folder

LEGEND = "legend.json"


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
    out_dir = ensure_writable_folder(out_dir, images, keep=False)  # made whole at the end: a refused run leaves nothing
    check_replaceable(out_dir, OUTPUTS_LIST)
    run = open_ovdiff(names, settings, prototypes, segment, prototypes_dir, support_dir)
    tick = time.perf_counter()
    with whole_folder(out_dir) as staging:
        write_legend(staging / LEGEND, names)
        for path, stem in tqdm(list(zip(images, stems)), desc="segment-ov", unit="image", disable=None):
            image = read_rgb(Path(path))
            result = run.segment(image)
            write_palette_png(staging / f"{stem}.png", result.labels)
            with atomic_path(staging / f"{stem}_overlay.jpg") as tmp:
                Image.fromarray(blend_labels(image, result.labels)).save(tmp, quality=90)
    done = time.perf_counter()
    return SegmentSummary(len(images), done - began, done - tick, out_dir, run.builder.report)


def write_legend(path: Path, names: list[str]) -> None:
    """``legend.json``: id -> class name and its palette colour (0 is the background)."""
    entries = [{"id": i, "class": name, "color": DAVIS_PALETTE[i].tolist()} for i, name in enumerate(["background", *names])]
    atomic_write_text(path, json.dumps(entries, indent=2) + "\n")
