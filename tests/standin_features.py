"""Stand-in feature sources for the protocol parity checks: colour statistics, no model.

``DiftGridStatistics`` puts them on the grid DINO's and DIFT's DAVIS scripts would use for a
backbone of the given stride: the frame resized so its short side is 480 and its long side is
floored to a multiple of 32 (their ``read_frame``), one cell per stride x stride pixels of
that -- (30, 52) for an 854x480 DAVIS frame at stride 16, (15, 26) at stride 32. The
statistics are ``CellStatistics`` (tests/test_propagate.py) of the frame area-resized by
8 / stride (8-pixel cells there are stride-pixel cells here).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.features.types import PDMFeatures
from tests.test_propagate import CELL, CellStatistics

SHORT_SIDE, MULTIPLE = 480, 32


def dift_input_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) DIFT's ``read_frame`` resizes a frame to (short side 480, long side
    floored to a multiple of 32)."""
    if height > width:
        return int(SHORT_SIDE * height / width // MULTIPLE * MULTIPLE), SHORT_SIDE
    return SHORT_SIDE, int(SHORT_SIDE * width / height // MULTIPLE * MULTIPLE)


class DiftGridStatistics:
    """FeatureSource stand-in on DIFT's grid for ``stride`` (a multiple of 8 dividing 32);
    counts its calls like a cache miss."""

    def __init__(self, stride: int = 16) -> None:
        self.statistics = CellStatistics()
        self.stride = stride
        self.calls = 0

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        self.calls += 1
        height, width = dift_input_size(*frames.shape[1:3])
        size = (height * CELL // self.stride, width * CELL // self.stride)
        pixels = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float()
        small = F.interpolate(pixels, size=size, mode="area").round().to(torch.uint8)
        return self.statistics(small.permute(0, 2, 3, 1).contiguous().numpy())
