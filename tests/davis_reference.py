"""An independent, deliberately plain re-derivation of the DAVIS 2017 protocol for the tests.

Written from the protocol text (the DAVIS 2017 paper and the davis2017-evaluation
README), not from pdmtrack.eval: one frame and one object at a time, boundaries from padded
neighbour comparisons, "within the disk" as a Euclidean distance transform (SciPy) instead of
a morphological dilation, and the decay bins from the rounding rule written out.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def boundary_pixels(mask: np.ndarray) -> np.ndarray:
    """Pixels that differ from their east, south or south-east neighbour (outside = 0).

    The bottom row compares with its east neighbour only, the right column with its south
    neighbour only, and the bottom-right pixel is never a boundary.
    """
    mask = mask.astype(bool)
    height, width = mask.shape
    padded = np.pad(mask, ((0, 1), (0, 1)))
    east, south, south_east = padded[:height, 1:], padded[1:, :width], padded[1:, 1:]
    boundary = (mask != east) | (mask != south) | (mask != south_east)
    boundary[height - 1, :] = mask[height - 1, :] != east[height - 1, :]
    boundary[:, width - 1] = mask[:, width - 1] != south[:, width - 1]
    boundary[height - 1, width - 1] = False
    return boundary


def distance_to(pixels: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of every pixel to the nearest True pixel of ``pixels``."""
    return cv2.distanceTransform((~pixels).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def jaccard(truth: np.ndarray, pred: np.ndarray) -> float:
    """|T and P| / |T or P|, 1 when both are empty."""
    union = np.logical_or(truth, pred).sum()
    return 1.0 if union == 0 else np.logical_and(truth, pred).sum() / union


def f_measure(truth: np.ndarray, pred: np.ndarray, radius: float | None = None) -> float:
    """Boundary F with tolerance ``radius`` (default ceil(0.008 * image diagonal))."""
    if radius is None:
        radius = math.ceil(0.008 * math.hypot(*truth.shape))
    truth_boundary, pred_boundary = boundary_pixels(truth), boundary_pixels(pred)
    n_truth, n_pred = truth_boundary.sum(), pred_boundary.sum()
    if n_pred == 0 and n_truth == 0:
        return 1.0
    if n_pred == 0 or n_truth == 0:
        return 0.0  # P, R = (1, 0) or (0, 1)
    precision = (distance_to(truth_boundary)[pred_boundary] <= radius).mean()
    recall = (distance_to(pred_boundary)[truth_boundary] <= radius).mean()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def statistics(values: list[float]) -> tuple[float, float, float]:
    """(mean, share of frames > 0.5, decay over four overlapping bins with half-up rounding)."""
    values_array = np.asarray(values, dtype=float)
    count = len(values_array)
    edges = [math.floor(1 + i * (count - 1) / 4 + 0.5) - 1 for i in range(5)]
    first = values_array[edges[0] : edges[1] + 1]
    last = values_array[edges[3] : edges[4] + 1]
    mean, recall = float(np.nanmean(values_array)), float(np.mean(values_array > 0.5))
    return mean, recall, float(np.nanmean(first) - np.nanmean(last))


def evaluate_folder(root: Path, results: Path, sequences: list[str]) -> dict[str, tuple[float, ...]]:
    """Per-object (J mean, recall, decay, F mean, recall, decay) keyed '<seq>_<id>', plus 'global'.

    'global' holds the seven official numbers in column order (J&F-Mean first).
    """
    scores: dict[str, tuple[float, ...]] = {}
    for sequence in sequences:
        annotation_dir = root / "Annotations" / "480p" / sequence
        annotation_files = sorted(annotation_dir.glob("*.png"))
        truths = [np.array(Image.open(path)) for path in annotation_files]
        truths = [np.where(truth == 255, 0, truth) for truth in truths]
        object_count = int(truths[0].max())
        j_values: dict[int, list[float]] = {k: [] for k in range(1, object_count + 1)}
        f_values: dict[int, list[float]] = {k: [] for k in range(1, object_count + 1)}
        for path, truth in list(zip(annotation_files, truths))[1:-1]:
            result_file = results / sequence / path.name
            pred = np.array(Image.open(result_file)) if result_file.exists() else np.zeros_like(truth)
            for k in j_values:
                j_values[k].append(jaccard(truth == k, pred == k))
                f_values[k].append(f_measure(truth == k, pred == k))
        for k in j_values:
            scores[f"{sequence}_{k}"] = (*statistics(j_values[k]), *statistics(f_values[k]))
    per_object = np.array(list(scores.values()))
    means = per_object.mean(axis=0)
    j_mean, f_mean = means[0], means[3]
    scores["global"] = ((j_mean + f_mean) / 2, *means[:3], *means[3:])
    return scores
