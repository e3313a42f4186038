"""Semantic segmentation scores (the PASCAL VOC protocol): one confusion matrix over a split,
pixels labelled void (255) ignored, IoU per class, mIoU their mean. Pure functions of arrays."""

from __future__ import annotations

import numpy as np

VOID = 255


def confusion_matrix(prediction: np.ndarray, truth: np.ndarray, num_classes: int, void: int = VOID) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction.

    Pixels whose truth is ``void`` are ignored; a prediction outside 0..num_classes-1 is a
    ValueError (a prediction cannot be void)."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in size")
    keep = truth != void
    gt = truth[keep].astype(np.int64)
    pred = prediction[keep].astype(np.int64)
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(f"ground truth holds ids outside 0..{num_classes - 1} and void {void}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"prediction holds ids outside 0..{num_classes - 1}")
    return np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU per class = TP / (TP + FP + FN); NaN for a class absent from truth and prediction."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """mIoU: the mean of the per-class IoUs over the classes that occur (NaN ones left out)."""
    ious = class_iou(confusion)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")
