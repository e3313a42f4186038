"""``propagate --init ovdiff``: the objects of a first frame from OVDiff and the class names.

Instead of thresholding the class name's cross-attention (``--init attention``, the
default), the start frame is segmented into the background and the class names with their prototypes
(built or read from the store, like ``segment-ov``); each class's connected components
(at least ``min_area`` of the frame) become separate objects (``instances``), each keeping
its class name for the tracker's semantic map.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.features.model import DiffusionParts
from pdmtrack.io.writers import write_palette_png
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig, check_classes
from pdmtrack.ovdiff.instances import split_instances
from pdmtrack.ovdiff.pipeline import OVDiffRun, ov_segmenter, prototype_builder
from pdmtrack.runs.video_folder import FIRST_FRAME_MASK, RunPlan
from pdmtrack.sam.refine import SamRefiner
from pdmtrack.tracking.models import feature_source
from pdmtrack.tracking.tracker import Tracker

MIN_OBJECT_AREA = 0.002  # smallest object kept, as a fraction of the frame (0.2%: ~820 px at 854x480)


def first_frame_objects(
    frame: np.ndarray,
    names: list[str],
    *,
    parts: DiffusionParts,
    settings: TrackSettings,
    refiner: SamRefiner | None,
    prototypes: PrototypeConfig,
    segment: SegmentConfig,
    prototypes_dir: Path | None = None,
    min_area: float = MIN_OBJECT_AREA,
) -> tuple[np.ndarray, list[str]]:
    """(H, W) uint8 object ids of ``frame`` and the class name of each object (ids 1..N)."""
    names = check_classes(list(dict.fromkeys(name.strip() for name in names)), "--cls")
    builder = prototype_builder(parts, settings, prototypes, refiner, prototypes_dir)
    run = OVDiffRun(builder, ov_segmenter(builder, names, segment), feature_source(parts, settings, []), prototypes)
    objects, classes = split_instances(run.segment(frame).labels, names, min_area)
    if not classes:
        raise InputError("--init", f"OVDiff found no {' / '.join(names)} in the first frame; give a mask (--mask FILE)")
    return objects, classes


def check_ovdiff_plan(plan: RunPlan) -> None:
    """InputError when ``plan`` cannot start from OVDiff objects (a mask is given); loads nothing."""
    if plan.masks:
        raise InputError("--init", "ovdiff makes the first-frame mask from the class names; give --mask or --init ovdiff, not both")


def plan_with_ovdiff_objects(
    tracker: Tracker,
    plan: RunPlan,
    prototypes: PrototypeConfig,
    segment: SegmentConfig,
    prototypes_dir: Path | None = None,
) -> RunPlan:
    """``plan`` (class names, no mask) with its start frame's objects found by OVDiff as the
    given mask, one class name per object; the mask is also written to first_frame_mask.png."""
    check_ovdiff_plan(plan)
    if tracker.parts is None:
        raise InputError("--init", "ovdiff needs the diffusion model (the tracker was given custom features)")
    frame = plan.reader.read(plan.start)
    objects, classes = first_frame_objects(
        frame,
        plan.classes,
        parts=tracker.parts,
        settings=tracker.settings,
        refiner=tracker.refiner,
        prototypes=prototypes,
        segment=segment,
        prototypes_dir=prototypes_dir,
    )
    write_palette_png(plan.out_dir / FIRST_FRAME_MASK, objects)
    counts = ", ".join(f"{classes.count(name)} {name}" for name in dict.fromkeys(classes))
    note = f"--init ovdiff: {len(classes)} object(s) in frame {plan.start} ({counts})"
    return replace(plan, masks={plan.start: objects}, classes=classes, notes=[*plan.notes, note])
