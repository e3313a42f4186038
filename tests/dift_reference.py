"""An independent, deliberately plain re-derivation of DINO's and DIFT's DAVIS label propagation.

Written from the protocol (their ``eval_video_segmentation.py`` / ``eval_davis.py`` as read, not
copied, and not from pdmtrack.tracking.memory): NumPy in float64, one context frame at a time, the
window as an explicit Chebyshev distance, the resizes written out as index arithmetic.

The protocol, for a video with features f_0 .. f_T on an (h, w) grid of stride s:

1. Frame 0's labels: the annotation resized to the grid with nearest neighbour, one-hot over
   background + the objects.
2. For frame t >= 1 the context is frame 0 plus the last n frames before t, each with its
   features and soft labels (frame 0: the one-hot of step 1; later frames: their propagated
   soft labels from step 4, kept as they are).
3. Affinity of target cell i to context cell j of context frame c:
   exp(cos(f_t[i], f_c[j]) / temperature) when the two cells are at most ``radius`` apart in
   rows and in columns, else 0 -- the first frame included.
4. Per target cell, all entries over all context frames at least as large as the k-th largest
   are kept (ties kept), normalised to sum 1, and the labels averaged with those weights.
5. The output: the soft labels upsampled by s (bilinear, pixel centres), each label channel
   whose maximum is positive min-max normalised over the image (``norm_mask``), the argmax
   (the first label on ties), and a nearest resize to the frame's size.
"""

from __future__ import annotations

import numpy as np


def nearest_resize(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) array to ``size`` = (h, w), sampling pixel centres
    as PIL's NEAREST does: output row r reads input row floor(y_r) with y_0 = step / 2 and
    y_r = y_(r-1) + step, step = H / h, summed in float64 one row at a time (the running sum,
    not (r + 0.5) * step, decides the rows that fall exactly on a boundary)."""

    def sources(out_count: int, in_count: int) -> np.ndarray:
        step = in_count / out_count
        positions = np.cumsum(np.r_[step * 0.5, np.full(out_count - 1, step)])
        return np.minimum(np.floor(positions).astype(np.int64), in_count - 1)

    rows, cols = sources(size[0], labels.shape[0]), sources(size[1], labels.shape[1])
    return labels[rows[:, None], cols[None, :]]


def one_hot(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """(h, w) label indices -> (num_labels, h, w) float64 one-hot."""
    return (labels[None] == np.arange(num_labels)[:, None, None]).astype(np.float64)


def bilinear_upsample(maps: np.ndarray, factor: int) -> np.ndarray:
    """(L, h, w) -> (L, h*factor, w*factor); output pixel x reads input coordinate
    (x + 0.5) / factor - 0.5, clamped to the map, interpolated between its two neighbours."""

    def axis_weights(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum((np.arange(count * factor) + 0.5) / factor - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(np.int64), count - 1)
        high = np.minimum(low + 1, count - 1)
        return low, high, source - low

    _, height, width = maps.shape
    row_low, row_high, row_frac = axis_weights(height)
    col_low, col_high, col_frac = axis_weights(width)
    rows = maps[:, row_low] * (1 - row_frac)[None, :, None] + maps[:, row_high] * row_frac[None, :, None]
    return rows[:, :, col_low] * (1 - col_frac) + rows[:, :, col_high] * col_frac


def normalise_channels(maps: np.ndarray) -> np.ndarray:
    """Each channel whose maximum is positive shifted to a minimum of 0 and scaled to a maximum
    of 1 (a channel that is constant after the shift is left shifted only); others untouched."""
    out = maps.copy()
    for channel in out:
        if channel.max() > 0:
            channel -= channel.min()
            if channel.max() > 0:
                channel /= channel.max()
    return out


def chebyshev_window(grid: tuple[int, int], radius: int) -> np.ndarray:
    """(N, N) bool over flat grid cells: True where rows and columns differ by <= radius."""
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    return (np.abs(rows[:, None] - rows[None, :]) <= radius) & (np.abs(cols[:, None] - cols[None, :]) <= radius)


def propagate_labels(
    target: np.ndarray,
    context_features: list[np.ndarray],
    context_labels: list[np.ndarray],
    window: np.ndarray,
    topk: int,
    temperature: float,
) -> np.ndarray:
    """Soft labels (L, N) of a target frame (C, N) from context frames (C, N) with labels (L, N)."""

    def unit(features: np.ndarray) -> np.ndarray:
        return features / np.maximum(np.linalg.norm(features, axis=0, keepdims=True), 1e-12)

    query = unit(target.astype(np.float64))
    affinity = np.concatenate(
        [np.where(window, np.exp(query.T @ unit(f.astype(np.float64)) / temperature), 0.0) for f in context_features], axis=1
    )  # (N target cells, frames * N context cells)
    kth = -np.partition(-affinity, topk - 1, axis=1)[:, topk - 1 : topk]
    kept = np.where(affinity >= kth, affinity, 0.0)
    weights = kept / kept.sum(axis=1, keepdims=True)
    labels = np.concatenate(context_labels, axis=1)  # (L, frames * N)
    return labels @ weights.T


def track_video(
    features: list[np.ndarray],
    first_mask: np.ndarray,
    num_labels: int,
    stride: int,
    context: int = 28,
    topk: int = 15,
    radius: int = 15,
    temperature: float = 0.2,
) -> list[np.ndarray]:
    """Label maps (H, W) of every frame after the first, given each frame's (C, h, w) features
    and frame 0's (H, W) label indices (0 background, 1..num_labels-1 objects)."""
    grid = features[0].shape[1:]
    cells = grid[0] * grid[1]
    window = chebyshev_window(grid, radius)
    first_features = features[0].reshape(-1, cells)
    first_labels = one_hot(nearest_resize(first_mask, grid), num_labels).reshape(num_labels, cells)
    recent: list[tuple[np.ndarray, np.ndarray]] = []
    outputs = []
    for frame_features in features[1:]:
        target = frame_features.reshape(-1, cells)
        soft = propagate_labels(
            target, [first_features] + [f for f, _ in recent], [first_labels] + [s for _, s in recent], window, topk, temperature
        )
        recent = (recent + [(target, soft)])[-context:] if context else []
        scores = normalise_channels(bilinear_upsample(soft.reshape(num_labels, *grid), stride))
        outputs.append(nearest_resize(scores.argmax(axis=0), first_mask.shape))
    return outputs
