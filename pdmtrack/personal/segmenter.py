"""Personalised image segmentation (PerSAM(PDM)): a reference image with its instances (a mask,
or a class name's attention) segmented in other images.

Per target and per object: the PDM combined map (Eq. 7; min-max normalised on the target),
bilinearly upsampled; without SAM each pixel goes to the object whose map is highest there
when that value reaches ``MatchConfig.segment_threshold``; with SAM the maps (against a
constant background at that threshold) prompt ``SamRefiner`` (box, peak point, the other
objects' peaks as negatives). Each object also gets a presence score: the peak of its raw
appearance map on the target relative to the object's self-similarity (the same map's mean
over the reference's own cells) — 1 means the best target cell matches the reference as well
as the reference matches itself. An object below ``presence_threshold`` is judged absent and
left out of the mask (a heuristic: the threshold is not calibrated on real weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.config import MatchConfig
from pdmtrack.errors import ParameterError
from pdmtrack.features.types import FeatureSource, PDMFeatures
from pdmtrack.sam.refine import SamRefiner
from pdmtrack.tracking.matching import features_appearance_map, mask_to_grid_bool, pdm_map, reference_mask_from_attention


def segment_from_maps(maps: torch.Tensor, image: np.ndarray, threshold: float, refiner: SamRefiner | None) -> np.ndarray:
    """(K, h, w) maps in [0, 1] -> (H, W) int64 labels of ``image`` (0 background, k for map k-1)."""
    height, width = image.shape[:2]
    upsampled = F.interpolate(maps[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
    if refiner is None:
        best, winner = upsampled.max(dim=0)
        return torch.where(best >= threshold, winner + 1, torch.zeros_like(winner)).cpu().numpy()
    background = torch.full_like(upsampled[:1], threshold)
    return refiner.refine(image, torch.cat([background, upsampled])).cpu().numpy()


@dataclass(frozen=True)
class ObjectScore:
    """One object in one target: raw appearance peak and mean, presence score and verdict."""

    object_id: int
    peak: float
    mean: float
    presence: float
    present: bool


@dataclass
class TargetResult:
    """Labels (H, W) uint8 (the reference's object ids) and each object's scores."""

    labels: np.ndarray
    objects: list[ObjectScore]


class ImageSegmenter:
    """The reference's objects, ready to be segmented in any number of target images.

    ``ref_labels``: (H, W) object ids of the reference image, or None to take one object from
    each class name's cross-attention (Eq. 3-4). ``class_rows``: per object, the row of its
    class in the source's class vectors (None: appearance only).
    """

    def __init__(
        self,
        source: FeatureSource,
        reference: np.ndarray,
        ref_labels: np.ndarray | None,
        class_rows: Sequence[int | None],
        match: MatchConfig,
        device: torch.device,
        refiner: SamRefiner | None = None,
        presence_threshold: float | None = None,
    ) -> None:
        self.source = source
        self.match = match
        self.device = device
        self.refiner = refiner
        self.presence_threshold = presence_threshold
        self.reference = source(reference[None]).to(device)
        if ref_labels is None:
            self.object_ids = list(range(1, len(class_rows) + 1))
            self.ref_masks = [self._attention_mask(row) for row in class_rows]
        else:
            self.object_ids = [int(k) for k in np.unique(ref_labels) if k != 0]
            if not self.object_ids:
                raise ParameterError("mask", "the reference mask holds no object")
            grid = self.reference.grid
            self.ref_masks = [mask_to_grid_bool(ref_labels == k, grid, match.min_fraction) for k in self.object_ids]
        if len(class_rows) not in (1, len(self.object_ids)):
            raise ParameterError("classes", f"give one class name, or one per object ({len(self.object_ids)})")
        self.class_rows = list(class_rows) * (len(self.object_ids) // len(class_rows))
        self.self_similarity = [float(self._appearance(mask, self.reference)[0][mask.to(self.device)].mean()) for mask in self.ref_masks]

    def _attention_mask(self, row: int | None) -> torch.Tensor:
        if row is None or self.reference.class_attention is None:
            raise ParameterError("classes", "without --mask the objects come from the class names' attention (--features pdm)")
        return reference_mask_from_attention(self.reference.class_attention[0, row], self.match.tau)

    def _appearance(self, ref_mask: torch.Tensor, target: PDMFeatures) -> torch.Tensor:
        return features_appearance_map(self.reference, ref_mask, target, self.match)

    def __call__(self, image: np.ndarray) -> TargetResult:
        """Segment the reference's objects in one (H, W, 3) uint8 RGB image."""
        target = self.source(image[None]).to(self.device)
        maps, scores = [], []
        for object_id, ref_mask, row, own in zip(self.object_ids, self.ref_masks, self.class_rows, self.self_similarity):
            raw = self._appearance(ref_mask, target)[0]
            peak = float(raw.max())
            presence = peak / own if own > 0 else 0.0
            present = self.presence_threshold is None or presence >= self.presence_threshold
            scores.append(ObjectScore(object_id, peak, float(raw.mean()), presence, present))
            combined = pdm_map(self.reference, ref_mask, target, row, self.match)[0]
            maps.append(combined if present else torch.zeros_like(combined))
        indices = segment_from_maps(torch.stack(maps), image, self.match.segment_threshold, self.refiner)
        lookup = np.array([0, *self.object_ids], dtype=np.uint8)
        return TargetResult(lookup[indices], scores)
