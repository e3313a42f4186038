"""The propagator's memory: the first frame plus the last n frames, and label propagation.

What is kept per context frame: its unit-norm appearance features (C, N) over the N grid
cells, and its soft labels (L, N) (background first, one row per object, columns summing to
1). The buffers are allocated once, so memory is flat in the video's length.

Reading the memory is the DAVIS label-propagation protocol of DINO and DIFT: the affinity of
a target cell to a context entry is exp(cos / temperature); the top-k entries over all
context frames jointly are kept, normalised, and their labels averaged. Recent frames are
only searched in a square window around the target cell (motion between nearby frames is
small); the first frame is searched everywhere when ``global_first_frame`` is set, because
an object that left and came back can be anywhere by then (set it off for the exact
DINO/DIFT protocol).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdmtrack.config import MemoryConfig
from pdmtrack.matching import SIMILARITY_BUDGET

REFERENCE_SHORT_SIDE = 30  # MemoryConfig.radius is given for a grid with this short side


def scaled_radius(radius: int, grid: tuple[int, int]) -> int:
    """``radius`` (cells on a 30-cell short side) scaled to ``grid``, at least 1 cell."""
    return max(1, round(radius * min(grid) / REFERENCE_SHORT_SIDE))


def window_mask(grid: tuple[int, int], radius: int, device: torch.device) -> torch.Tensor:
    """(N, N) bool: target cell i may match context cell j (Chebyshev distance <= radius)."""
    rows = torch.arange(grid[0], device=device).repeat_interleave(grid[1])
    cols = torch.arange(grid[1], device=device).repeat(grid[0])
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_rows & near_cols


def labels_to_grid(labels: torch.Tensor, num_labels: int, grid: tuple[int, int]) -> torch.Tensor:
    """(H, W) class indices -> (num_labels, N) fraction of each cell covered by each class."""
    one_hot = F.one_hot(labels.long(), num_labels).permute(2, 0, 1).float()
    return F.adaptive_avg_pool2d(one_hot[None], grid)[0].flatten(1)


class ContextMemory:
    """First frame + a ring of the last ``config.context`` frames, read by label propagation."""

    def __init__(
        self,
        config: MemoryConfig,
        first_keys: torch.Tensor,
        first_labels: torch.Tensor,
        grid: tuple[int, int],
    ) -> None:
        """first_keys (C, N) appearance features, first_labels (L, N) soft labels."""
        channels, cells = first_keys.shape
        if cells != grid[0] * grid[1] or first_labels.shape[1] != cells:
            raise ValueError(f"keys {tuple(first_keys.shape)} / labels do not fit the grid {grid}")
        device = first_keys.device
        self.config = config
        self.grid = grid
        self.capacity = config.context + 1
        self.keys = torch.zeros((self.capacity, channels, cells), device=device)
        self.labels = torch.zeros((self.capacity, first_labels.shape[0], cells), device=device)
        self.keys[0] = F.normalize(first_keys.float(), dim=0)
        self.labels[0] = first_labels.float()
        self.size = 1  # frames held (first frame included)
        self._next = 1  # ring slot the next frame goes to (slot 0 is the first frame's)
        self._outside = ~window_mask(grid, scaled_radius(config.radius, grid), device)

    def write(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a frame (keys (C, N), soft labels (L, N)), evicting the oldest recent frame."""
        if self.capacity == 1:
            return
        self.keys[self._next] = F.normalize(keys.float(), dim=0)
        self.labels[self._next] = labels.float()
        self.size = min(self.size + 1, self.capacity)
        self._next = 1 + self._next % (self.capacity - 1)

    def read(self, query: torch.Tensor) -> torch.Tensor:
        """Propagated soft labels (L, N) of a frame with appearance features ``query`` (C, N)."""
        query = F.normalize(query.float(), dim=0)
        cells = query.shape[1]
        topk = min(self.config.context_topk, cells * self.size)
        chunk = max(1, SIMILARITY_BUDGET // (cells * cells))
        scores, entries = [], []
        for start in range(0, self.size, chunk):
            stop = min(start + chunk, self.size)
            similarity = torch.einsum("cn,tcm->ntm", query, self.keys[start:stop])
            windowed = similarity[:, 1:] if start == 0 and self.config.global_first_frame else similarity
            windowed.masked_fill_(self._outside[:, None], -torch.inf)
            best, index = similarity.flatten(1).topk(min(topk, similarity[0].numel()), dim=1)
            scores.append(best)
            entries.append(index + start * cells)  # flat (frame, cell) index into the memory
        best, entry = scores[0], entries[0]
        if len(scores) > 1:  # the joint top-k lies within the union of the chunks' top-k
            best, pick = torch.cat(scores, 1).topk(topk, dim=1)
            entry = torch.cat(entries, 1).gather(1, pick)
        weights = torch.softmax(best / self.config.temperature, dim=1)  # exp(cos/T), normalised
        context_labels = self.labels[: self.size].permute(0, 2, 1).reshape(-1, self.labels.shape[1])
        return torch.einsum("nk,nkl->ln", weights, context_labels[entry])
