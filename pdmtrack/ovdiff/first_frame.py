"""``propagate --init ovdiff``: the objects of a first frame from OVDiff and the class names,
as a mask for ``Tracker.add_mask``.

Instead of thresholding the class name's cross-attention (``--init attention``, the
default), the start frame is segmented into the background and the class names with their prototypes
(built or read from the store, like ``segment-ov``); each class's connected components
(at least ``min_area`` of the frame) become separate objects (``instances``), each keeping
its class name for the tracker's semantic map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pdmtrack.errors import ParameterError
from pdmtrack.features.extractor import distinct_names
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig, check_classes
from pdmtrack.ovdiff.instances import split_instances
from pdmtrack.ovdiff.pipeline import OVDiffPipeline, ov_segmenter, prototype_builder
from pdmtrack.tracking.tracker import Tracker

MIN_OBJECT_AREA = 0.002  # smallest object kept, as a fraction of the frame (0.2%: ~820 px at 854x480)


def ovdiff_objects(
    tracker: Tracker,
    frame: np.ndarray,
    names: list[str],
    *,
    prototypes: PrototypeConfig | None = None,
    segment: SegmentConfig | None = None,
    prototypes_dir: str | Path | None = None,
    min_area: float = MIN_OBJECT_AREA,
) -> tuple[np.ndarray, list[str]]:
    """(H, W) uint8 object ids of ``frame`` ((H, W, 3) uint8 RGB) and the class name of each
    object (ids 1..N), with ``tracker``'s diffusion model and SAM; prototypes built or read
    from the store. For a notebook::

        objects, classes = ovdiff_objects(tracker, first_frame, ["dog"])
        state = tracker.init_state("video.mp4", classes)
        tracker.add_mask(state, 0, objects)
    """
    if tracker.parts is None:
        raise ParameterError("init", "ovdiff needs the diffusion model (the tracker was given custom features or DINOv2)")
    names = check_classes(distinct_names(names), "classes")
    prototypes = prototypes or PrototypeConfig()
    builder = prototype_builder(tracker.models, prototypes, prototypes_dir)
    run = OVDiffPipeline(builder, ov_segmenter(builder, names, segment or SegmentConfig()), tracker.models.pdm_source([]), prototypes)
    objects, classes = split_instances(run.segment(frame).labels, names, min_area)
    if not classes:
        raise ParameterError("init", f"OVDiff found no {' / '.join(names)} in the first frame; give a mask")
    return objects, classes
