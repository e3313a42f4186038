"""Segmentation by nearest prototype (OVDiff): M = argmax_c max_{P in P_c} cos(Phi(I), P).

The classes are the background (id 0) and the given names (ids 1..K, in order). A class's
score at a grid cell is its best foreground prototype's cosine; the background's is the best
cosine over the union of every given class's background prototypes (after stuff filtering),
so no threshold is hand-set. Classes the CLIP pre-filter drops cannot win. Scores are
upsampled to the image (bilinear) before the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.ovdiff.clip_filter import ClipFilter
from pdmtrack.ovdiff.config import SegmentConfig
from pdmtrack.ovdiff.prototypes import ClassPrototypes
from pdmtrack.ovdiff.stuff import filter_background, stuff_flags


@dataclass
class Segmentation:
    """labels: (H, W) uint8, 0 background, k the k-th class; kept: per class, whether the
    pre-filter let it compete; scores: (1 + K, h, w) cosine scores on the feature grid."""

    labels: np.ndarray
    kept: list[bool]
    scores: torch.Tensor


class OVSegmenter:
    """Segments images into the background and ``names`` with their prototypes."""

    def __init__(
        self,
        names: list[str],
        prototypes: list[ClassPrototypes],
        config: SegmentConfig,
        clip: ClipFilter | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if len(names) != len(prototypes):
            raise ValueError("one prototype set per class name")
        self.names = names
        self.config = config
        self.clip = clip
        self.device = torch.device(device)
        self.foregrounds = [p.foreground.to(self.device) for p in prototypes]
        self.backgrounds = [p.background.to(self.device) for p in prototypes]
        self.stuff = stuff_flags(names, config.stuff)

    def kept_classes(self, image: np.ndarray) -> list[bool]:
        """Per class, whether it competes in ``image`` (CLIP pre-filter with many classes)."""
        if self.clip is None or len(self.names) < self.config.clip_min_classes:
            return [True] * len(self.names)
        return self.clip.keep(image, self.names)

    def background_prototypes(self, kept: list[bool]) -> torch.Tensor:
        """The background class's prototypes: every class's, minus those a kept stuff class claims."""
        union = torch.cat(self.backgrounds)
        stuff = [fg for fg, is_stuff, keep in zip(self.foregrounds, self.stuff, kept) if is_stuff and keep]
        return filter_background(union, stuff, self.config.stuff_threshold)

    @torch.inference_mode()
    def scores(self, maps: torch.Tensor, kept: list[bool]) -> torch.Tensor:
        """maps (C, h, w) target features -> (1 + K, h, w) scores (-inf for dropped classes)."""
        tokens = F.normalize(maps.to(self.device, torch.float32).flatten(1), dim=0)  # (C, h*w)
        grid = maps.shape[-2:]
        background = self.background_prototypes(kept)
        rows = [(background @ tokens).amax(0) if len(background) else torch.full_like(tokens[0], -1.0)]
        for foreground, keep in zip(self.foregrounds, kept):
            rows.append((foreground @ tokens).amax(0) if keep else torch.full_like(tokens[0], -torch.inf))
        return torch.stack(rows).reshape(len(rows), *grid)

    def __call__(self, image: np.ndarray, maps: torch.Tensor) -> Segmentation:
        """image (H, W, 3) uint8 and its features (C, h, w) -> its segmentation."""
        kept = self.kept_classes(image)
        scores = self.scores(maps, kept)
        finite = torch.where(torch.isinf(scores), torch.full_like(scores, -2.0), scores)  # interpolation-safe
        upsampled = F.interpolate(finite[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
        labels = upsampled.argmax(0).to(torch.uint8).cpu().numpy()
        return Segmentation(labels, kept, scores.cpu())
