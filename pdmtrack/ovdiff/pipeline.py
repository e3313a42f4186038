"""OVDiff over loaded models: the prototype builder, the segmenter, and ``open_ovdiff``
(everything segmenting needs, built once) for ``segment-ov``, ``eval voc`` and
``propagate --init ovdiff``. The models come from ``pdmtrack.tracking.models.load_models``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdmtrack.config import TrackSettings
from pdmtrack.features.types import FeatureSource
from pdmtrack.io.files import ensure_writable_folder
from pdmtrack.ovdiff.builder import PrototypeBuilder
from pdmtrack.ovdiff.clip_filter import ClipFilter
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig, check_classes
from pdmtrack.ovdiff.prototypes import feature_maps
from pdmtrack.ovdiff.segment import OVSegmenter, Segmentation
from pdmtrack.ovdiff.store import PrototypeStore, check_store_folder
from pdmtrack.tracking.models import Models, check_feature_cache, load_models


def prototype_builder(
    models: Models,
    config: PrototypeConfig,
    prototypes_dir: str | Path | None,
    support_dir: str | Path | None = None,
    store_flag: str = "--prototypes",
) -> PrototypeBuilder:
    """A builder over the loaded diffusion model (and SAM, when loaded) whose store is
    ``prototypes_dir`` (None: the default folder), which the user gave as ``store_flag``."""
    fingerprint = models.parts.fingerprint if models.parts is not None else ""
    store = PrototypeStore(prototypes_dir, fingerprint, store_flag)
    return PrototypeBuilder(models, config, store, None if support_dir is None else Path(support_dir))


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
    builder = prototype_builder(load_models(settings), config, prototypes_dir, support_dir, "-o")
    builder.prototypes(names, rebuild)
    return builder


@dataclass
class OVDiffPipeline:
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
) -> OVDiffPipeline:
    """Load SAM and the diffusion model once, then prototypes (stored or built) of ``names``."""
    names = check_classes(names)
    check_feature_cache(settings)  # before the prototype folders, SAM and the big load
    _check_folders(prototypes_dir, support_dir, "--prototypes")
    models = load_models(settings)
    builder = prototype_builder(models, prototypes, prototypes_dir, support_dir)
    return OVDiffPipeline(builder, ov_segmenter(builder, names, segment), models.pdm_source([]), prototypes)
