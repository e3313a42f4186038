"""PDM retrieval scores of a gallery for one query, streamed image by image.

The paper's global score is the mean of the combined map (Eq. 7), where the appearance and
semantic maps are min-max normalised jointly over the whole gallery (a per-image min-max
would erase the absolute similarity that ranks images). Min-max is affine, so the mean of a
normalised map is the normalised mean of the raw map: a scorer keeps, per gallery image,
only the raw maps' means, and over the gallery their minimum and maximum. The gallery's
features never have to be held at once.
"""

from __future__ import annotations

import numpy as np
import torch

from pdmtrack.config import MatchConfig
from pdmtrack.features.types import PDMFeatures
from pdmtrack.tracking.matching import features_appearance_map, semantic_map


class _Range:
    """Running minimum and maximum of everything seen, and the affine min-max map they define."""

    def __init__(self) -> None:
        self.low = float("inf")
        self.high = float("-inf")

    def update(self, maps: torch.Tensor) -> None:
        self.low = min(self.low, float(maps.min()))
        self.high = max(self.high, float(maps.max()))

    def normalise(self, values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        span = self.high - self.low
        return (values - self.low) / (span if span > 0 else 1.0)


class QueryScorer:
    """Scores gallery images against one query (its features, mask on the grid, class row).

    ``add`` the gallery's features in any batches, in gallery order; ``scores`` then gives
    the PDM global score of every image added; ``maps`` the combined maps of some targets
    under the same gallery-wide normalisation (for display). Without a class (or with
    features that carry no class vectors) the appearance map stands alone.
    """

    def __init__(self, reference: PDMFeatures, ref_mask: torch.Tensor, class_index: int | None, match: MatchConfig) -> None:
        if len(reference) != 1:
            raise ValueError(f"the reference must be one frame, got {len(reference)}")
        self.reference = reference
        self.ref_mask = ref_mask
        self.match = match
        has_class = class_index is not None and reference.class_vectors is not None
        self.class_vector = reference.class_vectors[class_index] if has_class else None  # type: ignore[index]
        self._ranges = [_Range() for _ in range(1 if self.class_vector is None else 2)]
        self._means: list[list[np.ndarray]] = [[] for _ in self._ranges]

    def raw_maps(self, targets: PDMFeatures) -> list[torch.Tensor]:
        """The raw appearance map (and semantic map with a class) of each target, (B, h, w)."""
        maps = [features_appearance_map(self.reference, self.ref_mask, targets, self.match)]
        if self.class_vector is not None:
            maps.append(semantic_map(self.class_vector, targets.semantic))
        return maps

    def add(self, targets: PDMFeatures) -> None:
        """Account for a batch of gallery images (their features, on the reference's device)."""
        for maps, value_range, means in zip(self.raw_maps(targets), self._ranges, self._means):
            value_range.update(maps)
            means.append(maps.float().mean(dim=(-2, -1)).cpu().numpy().astype(np.float64))

    def scores(self) -> np.ndarray:
        """The PDM global score of every image added, in order (mean of the normalised parts)."""
        parts = [value_range.normalise(np.concatenate(means)) for value_range, means in zip(self._ranges, self._means)]
        return sum(parts) / len(parts)  # type: ignore[return-value]

    def maps(self, targets: PDMFeatures) -> torch.Tensor:
        """Combined maps (B, h, w) of ``targets``, normalised with the gallery's range (clipped to [0, 1])."""
        parts = [value_range.normalise(maps.float()) for maps, value_range in zip(self.raw_maps(targets), self._ranges)]
        return (sum(parts) / len(parts)).clamp(0.0, 1.0)  # type: ignore[union-attr]
