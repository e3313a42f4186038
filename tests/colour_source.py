"""A stand-in feature source for retrieval/segmentation tests: per 8x8-pixel cell, the share
of its pixels nearest to each of red, green and blue (black counts for none). Instances drawn
as solid boxes in those colours are then matched exactly, with scores that follow from counting."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.features.types import PDMFeatures

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
_PALETTE = torch.tensor([*COLOURS.values(), (0, 0, 0)], dtype=torch.float32)
CELL = 8


class ColourSource:
    """FeatureSource stand-in; counts its calls (one per gallery image when cached per image)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        self.calls += 1
        rgb = torch.from_numpy(np.array(frames)).float()
        nearest = ((rgb[..., None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)
        onehot = F.one_hot(nearest, len(_PALETTE))[..., :-1].permute(0, 3, 1, 2).float()
        cells = F.avg_pool2d(onehot, CELL, ceil_mode=True).to(torch.float16)
        return PDMFeatures(appearance=cells, semantic=cells[:, :0])


def box_image(height: int, width: int, boxes: list[tuple[str, int, int, int, int]]) -> np.ndarray:
    """A black (H, W, 3) uint8 image with solid boxes (colour, y0, x0, y1, x1)."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for colour, y0, x0, y1, x1 in boxes:
        image[y0:y1, x0:x1] = COLOURS[colour]
    return image
