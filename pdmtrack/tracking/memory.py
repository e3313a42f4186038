"""The propagator's memory: permanent keyframes plus the last n frames, and label propagation.

What is kept per memory frame: its unit-norm appearance features (C, N) over the N grid cells
and its soft labels (L, N) (background first, one row per object slot, columns summing to 1).
Two kinds of frames, as Cutie keeps permanent and working memory:

- keyframes: frames whose mask the user gave (the first one and corrections). They stay for
  the whole run: the first given mask always, plus the ``max_keyframes`` latest later ones
  (older ones are given out first). A mask that adds objects restarts the keyframes at it:
  earlier masks would vote "background" on the new objects' cells;
- recent frames: a ring of the last ``context`` tracked frames. A correction clears it: the
  frames before a correction carry the drift the correction fixes.

The buffers are allocated once, so memory is flat in the video's length.

Reading the memory is the DAVIS label-propagation protocol of DINO and DIFT: the affinity of
a target cell to a memory entry is exp(cos / temperature); the top-k entries over all memory
frames jointly are kept, normalised, and their labels averaged. Recent frames are only
searched in a square window around the target cell (motion between nearby frames is small);
keyframes are searched everywhere when ``global_first_frame`` is set, because an object that
left and came back can be anywhere by then (set it off for the exact DINO/DIFT protocol).

With ``protocol`` dift (or authors-code) the read is theirs step for step: every frame,
keyframes included, is searched in the window; ``radius`` counts cells as it is (not scaled
with the grid); and every entry at least as large as the k-th largest is kept (ties can keep
more than k, as their ``aff[aff < kth] = 0`` does).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pdmtrack.config import MemoryConfig
from pdmtrack.tracking.topk import similarity_budget, top_entries

REFERENCE_SHORT_SIDE = 30  # MemoryConfig.radius is given for a grid with this short side
TIE_MARGIN = 16  # extra entries the exact read looks at for ties with the k-th (more: a full pass)


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
    """(H, W) slots -> (num_labels, N) fraction of each cell covered by each slot."""
    one_hot = F.one_hot(labels.long(), num_labels).permute(2, 0, 1).float()
    return F.adaptive_avg_pool2d(one_hot[None], grid)[0].flatten(1)


def nearest_resize(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) slots (< 256) resized to ``size`` (h, w) with PIL's nearest neighbour, which
    samples pixel centres: DINO's and DIFT's resize of label maps (to the grid and back)."""
    image = Image.fromarray(labels.to(device="cpu", dtype=torch.uint8).numpy())
    resized = np.asarray(image.resize((size[1], size[0]), Image.NEAREST))
    return torch.from_numpy(resized.astype(np.int64)).to(labels.device)


def labels_to_grid_nearest(labels: torch.Tensor, num_labels: int, grid: tuple[int, int]) -> torch.Tensor:
    """(H, W) slots -> (num_labels, N) one-hot of the labels nearest-resized to the grid (DIFT's)."""
    return F.one_hot(nearest_resize(labels, grid).flatten(), num_labels).T.float()


class ContextMemory:
    """Keyframes (slots ``0 .. 1 + max_keyframes``) and a ring of recent frames after them."""

    def __init__(
        self,
        config: MemoryConfig,
        grid: tuple[int, int],
        channels: int,
        num_labels: int,
        device: torch.device,
        search_dtype: torch.dtype = torch.float32,
    ) -> None:
        """``search_dtype``: float16/bfloat16 for the half-precision first pass of the top-k
        search (exact all the same, see ``affinity``), float32 for a float32 search only."""
        cells = grid[0] * grid[1]
        self.config = config
        self.grid = grid
        self.keyframe_capacity = 1 + config.max_keyframes
        self.capacity = self.keyframe_capacity + config.context
        self.keys = torch.zeros((self.capacity, channels, cells), device=device)
        self.labels = torch.zeros((self.capacity, num_labels, cells), device=device)
        half = search_dtype != torch.float32
        self.search_keys = torch.zeros((self.capacity, channels, cells), device=device, dtype=search_dtype) if half else None
        self.budget = similarity_budget(device)
        self.keyframes = 0  # keyframe slots in use (from slot 0)
        self.recent = 0  # recent-frame slots in use
        self._next = 0  # ring position (0 .. context - 1) the next recent frame goes to
        self.exact = config.protocol != "pdmtrack"  # DINO/DIFT's read, step for step
        radius = config.radius if self.exact else scaled_radius(config.radius, grid)
        self._outside = ~window_mask(grid, radius, device)

    @property
    def size(self) -> int:
        """Frames held, keyframes included."""
        return self.keyframes + self.recent

    def _check(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        if keys.shape != self.keys.shape[1:] or labels.shape != self.labels.shape[1:]:
            raise ValueError(f"keys {tuple(keys.shape)} / labels {tuple(labels.shape)} do not fit the memory")

    def add_keyframe(self, keys: torch.Tensor, labels: torch.Tensor, restart: bool = False) -> None:
        """A given mask (keys (C, N), labels (L, N)): kept for good; the recent frames are cleared,
        and with ``restart`` the earlier keyframes too."""
        self._check(keys, labels)
        if restart:
            self.keyframes = 0
        if self.keyframes == self.keyframe_capacity:
            if self.keyframe_capacity == 1:  # no room beside the first: it becomes a recent frame
                self.write(keys, labels)
                return
            for buffer in (self.keys, self.labels, self.search_keys):
                if buffer is not None:
                    buffer[1 : self.keyframe_capacity - 1] = buffer[2 : self.keyframe_capacity].clone()
            self.keyframes -= 1
        self._store(self.keyframes, keys, labels)
        self.keyframes += 1
        self.recent, self._next = 0, 0

    def write(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a tracked frame (keys (C, N), soft labels (L, N)), evicting the oldest recent one."""
        self._check(keys, labels)
        if self.config.context == 0:
            return
        self._store(self.keyframe_capacity + self._next, keys, labels)
        self.recent = min(self.recent + 1, self.config.context)
        self._next = (self._next + 1) % self.config.context

    def remap_labels(self, keep: list[int], added: int) -> None:
        """Keep the label rows ``keep`` (background first) and append ``added`` empty ones: objects
        ended by a correction leave, objects it introduces arrive with no mass in the past."""
        kept = self.labels[:, keep]
        self.labels = torch.cat([kept, kept.new_zeros((self.capacity, added, kept.shape[2]))], dim=1)

    def fold_into_background(self, rows: list[int]) -> None:
        """Move the mass of label rows ``rows`` to background's row 0 (objects that end)."""
        if rows:
            self.labels[:, 0] += self.labels[:, rows].sum(1)
            self.labels[:, rows] = 0

    def _store(self, slot: int, keys: torch.Tensor, labels: torch.Tensor) -> None:
        self.keys[slot] = F.normalize(keys.float(), dim=0)
        self.labels[slot] = labels.float()
        if self.search_keys is not None:
            self.search_keys[slot] = self.keys[slot]

    def _runs(self) -> list[range]:
        """The slots in use: the keyframes, then the recent frames (one run when adjacent)."""
        if self.keyframes == self.keyframe_capacity:
            return [range(0, self.keyframe_capacity + self.recent)]
        runs = [range(0, self.keyframes), range(self.keyframe_capacity, self.keyframe_capacity + self.recent)]
        return [run for run in runs if len(run)]

    def read(self, query: torch.Tensor) -> torch.Tensor:
        """Propagated soft labels (L, N) of a frame with appearance features ``query`` (C, N)."""
        query = F.normalize(query.float(), dim=0)
        cells = query.shape[1]
        unwindowed = self.keyframes if self.config.global_first_frame and not self.exact else 0
        total = cells * self.size
        topk = min(self.config.context_topk, total)
        wanted = min(topk + TIE_MARGIN, total) if self.exact else topk  # room to see ties with the k-th
        best, entry = top_entries(query, self.keys, self._runs(), wanted, self._outside, unwindowed, self.budget, self.search_keys)
        if self.exact:  # keep every entry tied with the k-th, as DINO's and DIFT's read does
            kth = best[:, topk - 1 : topk]
            if wanted < total and bool((best[:, -1:] >= kth).any()):  # more ties than the margin
                return self._read_with_ties(query, best[:, :1], kth)
            best = best.masked_fill(best < kth, -torch.inf)
        weights = torch.softmax(best / self.config.temperature, dim=1)  # exp(cos/T), normalised
        chosen = self.labels[entry // cells, :, entry % cells]  # (N, k, L)
        return torch.einsum("nk,nkl->ln", weights, chosen)

    def _read_with_ties(self, query: torch.Tensor, top: torch.Tensor, kth: torch.Tensor) -> torch.Tensor:
        """Labels (L, N) from every windowed entry whose similarity is at least the k-th largest
        (``kth``, (N, 1)); weights exp((cos - top) / T), normalised (exp(cos / T) up to a constant)."""
        cells = query.shape[1]
        total = query.new_zeros(self.labels.shape[1], cells)
        mass = query.new_zeros(1, cells)
        chunk = max(1, self.budget // (cells * cells))
        for run in self._runs():
            for begin in range(run.start, run.stop, chunk):
                slots = slice(begin, min(run.stop, begin + chunk))
                similarity = torch.einsum("cn,tcm->ntm", query, self.keys[slots])
                similarity.masked_fill_(self._outside[:, None], -torch.inf)
                weights = torch.where(
                    similarity >= kth[:, :, None], torch.exp((similarity - top[:, :, None]) / self.config.temperature), 0.0
                )
                total += torch.einsum("ntm,tlm->ln", weights, self.labels[slots])
                mass += weights.sum(dim=(1, 2))[None]
        return total / mass
