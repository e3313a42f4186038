"""Segmentation and retrieval metrics: DAVIS J/F (official protocol), IoU, boundary IoU, AP.

The DAVIS functions reproduce davis2017-evaluation (``davis2017/metrics.py`` and
``davis2017/utils.py``) operation for operation, so the numbers match it to the last bit;
the only change is that they are vectorised over any leading axes (frames, objects).
All functions are pure: arrays in, numbers out.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np

# cv2.dilate handles at most this many channels in one call (more fail its 2-D check).
_MAX_DILATE_CHANNELS = 128


def disk_footprint(radius: float) -> np.ndarray:
    """``skimage.morphology.disk(radius)``: uint8 grid points with x^2 + y^2 <= radius^2."""
    offsets = np.arange(-radius, radius + 1)
    xs, ys = np.meshgrid(offsets, offsets)
    return np.asarray(xs**2 + ys**2 <= radius**2, dtype=np.uint8)


def _as_bool_pair(annotation: np.ndarray, segmentation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    annotation = np.asarray(annotation).astype(bool)
    segmentation = np.asarray(segmentation).astype(bool)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} differ in shape")
    if annotation.ndim < 2:
        raise ValueError(f"masks need at least 2 dimensions (H, W), got {annotation.shape}")
    return annotation, segmentation


def _keep_mask(void_pixels: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if void_pixels is None:
        return None
    void_pixels = np.asarray(void_pixels).astype(bool)
    if void_pixels.shape != shape:
        raise ValueError(f"void pixels {void_pixels.shape} and masks {shape} differ in shape")
    return ~void_pixels


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray, void_pixels: np.ndarray | None = None) -> np.ndarray:
    """Region similarity J = |A and S| / |A or S| over the last two axes (1 where the union is empty).

    ``annotation``/``segmentation`` are (..., H, W) binary masks; the result has shape (...)
    (a 0-d array for a single (H, W) pair). Void pixels are left out of both counts.
    """
    annotation, segmentation = _as_bool_pair(annotation, segmentation)
    keep = _keep_mask(void_pixels, annotation.shape)
    inters = segmentation & annotation
    union = segmentation | annotation
    if keep is not None:
        inters &= keep
        union &= keep
    inters_count = np.sum(inters, axis=(-2, -1))
    union_count = np.sum(union, axis=(-2, -1))
    empty = np.isclose(union_count, 0)
    jaccard = np.divide(inters_count, union_count, out=np.ones(union_count.shape), where=~empty)
    return jaccard


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of binary masks (..., H, W), as the official ``_seg2bmap``.

    A pixel is boundary where it differs from its east, south or south-east neighbour
    (outside the image counts as background); the last row compares east only, the last
    column south only, and the bottom-right pixel is never boundary.
    """
    seg = np.asarray(seg).astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[..., :, :-1] = seg[..., :, 1:]
    south[..., :-1, :] = seg[..., 1:, :]
    south_east[..., :-1, :-1] = seg[..., 1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    bmap[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
    bmap[..., -1, -1] = False
    return bmap


def _dilate_stack(masks: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """cv2.dilate of each (H, W) mask in an (N, H, W) stack, many masks per OpenCV call."""
    out = np.empty(masks.shape, dtype=bool)
    for start in range(0, masks.shape[0], _MAX_DILATE_CHANNELS):
        chunk = masks[start : start + _MAX_DILATE_CHANNELS]
        channels_last = np.ascontiguousarray(chunk.transpose(1, 2, 0), dtype=np.uint8)
        dilated = cv2.dilate(channels_last, footprint)
        out[start : start + chunk.shape[0]] = dilated.reshape(channels_last.shape).transpose(2, 0, 1) > 0
    return out


def db_eval_boundary(
    annotation: np.ndarray, segmentation: np.ndarray, void_pixels: np.ndarray | None = None, bound_th: float = 0.008
) -> np.ndarray:
    """Boundary measure F per (H, W) pair over any leading axes (official ``f_measure``).

    Boundaries are ``seg2bmap`` maps; each is dilated with ``disk(ceil(bound_th * diagonal))``
    (``bound_th`` >= 1 is a radius in pixels). Precision is the share of predicted boundary
    pixels inside the dilated ground-truth boundary, recall the converse, F = 2PR/(P+R).
    Empty prediction and GT: P = R = 1; empty prediction only: P = 1, R = 0; empty GT only:
    P = 0, R = 1; P + R = 0: F = 0.
    """
    annotation, segmentation = _as_bool_pair(annotation, segmentation)
    keep = _keep_mask(void_pixels, annotation.shape)
    if keep is not None:
        annotation = annotation & keep
        segmentation = segmentation & keep
    frame_shape = annotation.shape[-2:]
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(frame_shape))
    footprint = disk_footprint(bound_pix)

    fg_boundary = seg2bmap(segmentation.reshape(-1, *frame_shape))
    gt_boundary = seg2bmap(annotation.reshape(-1, *frame_shape))
    fg_dilated = _dilate_stack(fg_boundary, footprint)
    gt_dilated = _dilate_stack(gt_boundary, footprint)

    n_fg = fg_boundary.sum(axis=(-2, -1))
    n_gt = gt_boundary.sum(axis=(-2, -1))
    fg_match = (fg_boundary & gt_dilated).sum(axis=(-2, -1))
    gt_match = (gt_boundary & fg_dilated).sum(axis=(-2, -1))
    # An empty boundary gives P (or R) = 1; the other one is then 0 by construction.
    precision = np.divide(fg_match, n_fg, out=np.ones(n_fg.shape), where=n_fg > 0)
    recall = np.divide(gt_match, n_gt, out=np.ones(n_gt.shape), where=n_gt > 0)
    total = precision + recall
    f_measure = np.divide(2 * precision * recall, total, out=np.zeros(total.shape), where=total != 0)
    return f_measure.reshape(annotation.shape[:-2])


def db_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of one object's per-frame J or F, as the official ``db_statistics``.

    Mean ignores NaNs; Recall is the share of frames above 0.5; Decay is the mean of the
    first of four overlapping bins minus the mean of the last. The bin edges are cast to
    uint8 exactly as upstream does, so (like upstream) Decay is only meaningful for at most
    256 scored frames.
    """
    values = np.asarray(per_frame, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
    n_bins = 4
    edges = (np.round(np.linspace(1, len(values), n_bins + 1) + 1e-10) - 1).astype(np.uint8)
    first_bin = values[edges[0] : edges[1] + 1]
    last_bin = values[edges[3] : edges[4] + 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        decay = np.nanmean(first_bin) - np.nanmean(last_bin)
    return float(mean), float(recall), float(decay)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two binary (H, W) masks; 1.0 when both are empty."""
    return float(db_eval_iou(gt, pred))


def _boundary_band(mask: np.ndarray, dilation_ratio: float) -> np.ndarray:
    """Mask pixels within ``round(ratio * diagonal)`` (>= 1) of the background or image edge."""
    height, width = mask.shape
    dilation = max(1, int(round(dilation_ratio * np.sqrt(height**2 + width**2))))
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), dtype=np.uint8), iterations=dilation)[1:-1, 1:-1]
    return mask & (eroded == 0)


def boundary_counts(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = 0.02) -> tuple[int, int]:
    """(intersection, union) pixel counts of the two masks' boundary bands (see ``boundary_iou``)."""
    pred, gt = _as_bool_pair(pred, gt)
    if pred.ndim != 2:
        raise ValueError(f"boundary IoU takes one (H, W) mask pair, got {pred.shape}")
    pred_band = _boundary_band(pred, dilation_ratio)
    gt_band = _boundary_band(gt, dilation_ratio)
    return int(np.count_nonzero(pred_band & gt_band)), int(np.count_nonzero(pred_band | gt_band))


def boundary_iou(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU (Cheng et al., CVPR 2021) of two binary (H, W) masks.

    Each mask's boundary band is the mask minus its erosion by ``round(ratio * diagonal)``
    pixels (the image edge counts as background), as in the authors' boundary-iou-api.
    Two empty masks give 1.0 (their official code divides 0 by 0 there).
    """
    intersection, union = boundary_counts(pred, gt, dilation_ratio)
    return intersection / union if union else 1.0


def _ranking(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives).astype(bool).ravel()
    if scores.shape != positives.shape:
        raise ValueError(f"{scores.size} scores but {positives.size} positive flags")
    if not positives.any():
        raise ValueError("no positive item: the metric is undefined")
    order = np.argsort(-scores, kind="stable")
    return scores[order], positives[order]


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Average precision of a gallery ranked by descending score (tie-aware).

    AP = sum over distinct score thresholds of (recall gain) x (precision at that threshold),
    the definition of scikit-learn's ``average_precision_score``; without ties it is the mean
    of the precision at the rank of every positive.
    """
    sorted_scores, sorted_positives = _ranking(scores, positives)
    true_positives = np.cumsum(sorted_positives)
    # Evaluate only at the last item of each group of equal scores (one threshold per group).
    threshold_ends = np.flatnonzero(np.r_[np.diff(sorted_scores) != 0, True])
    tp_at = true_positives[threshold_ends]
    precision = tp_at / (threshold_ends + 1)
    recall = tp_at / true_positives[-1]
    recall_gain = np.diff(recall, prepend=0.0)
    return float(np.sum(recall_gain * precision))


def recall_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Recall@k as in retrieval benchmarks: 1.0 if any of the k best-scored items is positive.

    Equal scores keep the gallery order (stable sort).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _, sorted_positives = _ranking(scores, positives)
    return float(sorted_positives[:k].any())


def revisited_average_precision(ranking: np.ndarray, positives: np.ndarray, junk: np.ndarray) -> float:
    """AP of one query in the revisited Oxford/Paris protocol (revisitop's ``compute_ap``).

    ranking: gallery indices, best first (a truncated list leaves the missing positives
    unfound); positives, junk: gallery indices. Junk images are removed from the ranking;
    then, with r_j the zero-based rank of the j-th positive found, AP is the trapezoid sum
    over j of (j / r_j + (j + 1) / (r_j + 1)) / 2 / n_positives, where j / r_j counts as 1
    at r_j = 0. NaN when there is no positive (the query is then left out of the mean).
    """
    positives = np.unique(np.asarray(positives, dtype=np.int64))
    if positives.size == 0:
        return float("nan")
    ranking = np.asarray(ranking, dtype=np.int64).ravel()
    kept = ranking[~np.isin(ranking, np.asarray(junk, dtype=np.int64))]
    ranks = np.flatnonzero(np.isin(kept, positives)).astype(np.float64)
    found = np.arange(ranks.size, dtype=np.float64)
    before = np.divide(found, ranks, out=np.ones_like(ranks), where=ranks > 0)
    after = (found + 1) / (ranks + 1)
    return float(np.sum((before + after) / 2) / positives.size)
