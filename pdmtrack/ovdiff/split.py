"""Foreground/background of each support image, from its class token's cross-attention.

The attention map is upsampled to the image, min-max normalised and thresholded (the
foreground is where it reaches ``threshold``); with SAM the coarse mask is refined exactly as
a tracked object's is (box, peak point, coarse log-odds as mask input; the coarse mask stays
when SAM disagrees wildly). The paper uses CutLER proposals here; SAM prompted from the
attention is the available substitute. On the feature grid a cell is foreground when the
mask covers at least half of it (an image's best-covered cell at least) and background when
the mask covers at most ``bg_max_fraction`` of it; cells in between belong to neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.sam.refine import SamRefiner
from pdmtrack.tracking.matching import mask_to_grid, mask_to_grid_bool, minmax


@dataclass
class CellSplit:
    """Per support image, its foreground and background cells on the feature grid, (N, h, w) bool."""

    foreground: torch.Tensor
    background: torch.Tensor


def foreground_masks(images: np.ndarray, attention: torch.Tensor, threshold: float, refiner: SamRefiner | None) -> np.ndarray:
    """images (N, H, W, 3) uint8, attention (N, h, w) -> (N, H, W) bool foreground masks."""
    height, width = images.shape[1:3]
    upsampled = F.interpolate(attention[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)
    scores = minmax(upsampled[:, 0])
    masks = scores >= threshold  # a constant map (no evidence) is empty: threshold > 0
    if refiner is None:
        return masks.cpu().numpy()
    refined = []
    for image, score in zip(images, scores):
        background = torch.full_like(score, threshold)
        refined.append((refiner.refine(image, torch.stack([background, score])) == 1).cpu().numpy())
    return np.stack(refined)


def split_cells(masks: np.ndarray, grid: tuple[int, int], bg_max_fraction: float) -> CellSplit:
    """(N, H, W) bool masks -> foreground and background cells of the (h, w) feature grid."""
    foreground = torch.stack([mask_to_grid_bool(mask, grid) for mask in masks])
    background = torch.stack([mask_to_grid(mask, grid) <= bg_max_fraction for mask in masks]) & ~foreground
    return CellSplit(foreground, background)
