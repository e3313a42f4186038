"""J, F, DAVIS statistics, mask/boundary IoU, AP and Recall@k on masks worked out by hand."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pdmtrack.eval.metrics import (
    average_precision,
    boundary_iou,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    disk_footprint,
    mask_iou,
    recall_at_k,
    seg2bmap,
)
from tests import davis_reference as reference


def square(shape: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


# --- the disk footprint -------------------------------------------------------------------


@pytest.mark.parametrize(("radius", "lattice_points"), [(0, 1), (1, 5), (2, 13), (3, 29), (5, 81), (8, 197)])
def test_disk_footprint_counts_the_lattice_points_of_the_circle(radius: int, lattice_points: int) -> None:
    # Gauss circle problem: number of (x, y) in Z^2 with x^2 + y^2 <= r^2 (OEIS A000328).
    footprint = disk_footprint(float(radius))
    assert footprint.shape == (2 * radius + 1, 2 * radius + 1)
    assert footprint.dtype == np.uint8
    assert footprint.sum() == lattice_points
    assert footprint[radius, 0] == 1 and footprint[0, 0] == (radius == 0)


# --- J --------------------------------------------------------------------------------------


def test_j_of_a_square_shifted_sideways() -> None:
    # Two 10x10 squares, 3 px apart horizontally: overlap 10x7 = 70, union 200 - 70 = 130.
    truth = square((40, 40), 5, 5, 10)
    pred = square((40, 40), 5, 8, 10)
    assert float(db_eval_iou(truth, pred)) == pytest.approx(70 / 130)


def test_j_edge_cases() -> None:
    empty = np.zeros((20, 20), dtype=bool)
    dot = np.zeros((20, 20), dtype=bool)
    dot[7, 7] = True
    moved_dot = np.roll(dot, 1, axis=1)
    assert float(db_eval_iou(empty, empty)) == 1.0  # nothing to find, nothing found
    assert float(db_eval_iou(dot, empty)) == 0.0
    assert float(db_eval_iou(empty, dot)) == 0.0
    assert float(db_eval_iou(dot, dot)) == 1.0
    assert float(db_eval_iou(dot, moved_dot)) == 0.0


def test_j_over_frames_and_void_pixels() -> None:
    truth = np.stack([square((30, 30), 0, 0, 10), square((30, 30), 0, 0, 10)])
    pred = np.stack([square((30, 30), 0, 0, 10), square((30, 30), 0, 5, 10)])
    np.testing.assert_allclose(db_eval_iou(truth, pred), [1.0, 50 / 150])
    # Declaring the non-overlapping parts void leaves only the 10x5 overlap: J = 1.
    void = np.stack([np.zeros((30, 30), bool), truth[1] ^ pred[1]])
    np.testing.assert_allclose(db_eval_iou(truth, pred, void), [1.0, 1.0])


# --- F --------------------------------------------------------------------------------------


def test_boundary_map_of_a_square_is_the_ring_around_it() -> None:
    # A side-n square at rows/cols 5..5+n-1 marks the (n+1)x(n+1) box starting one pixel up
    # and left: its outline has 4n pixels.
    n = 6
    bmap = seg2bmap(square((20, 20), 5, 5, n))
    box = np.zeros((20, 20), bool)
    box[4 : 5 + n, 4 : 5 + n] = True
    outline = box.copy()
    outline[5 : 4 + n, 5 : 4 + n] = False
    assert bmap.sum() == 4 * n
    np.testing.assert_array_equal(bmap, outline)


def test_f_edge_cases() -> None:
    empty = np.zeros((30, 30), dtype=bool)
    blob = square((30, 30), 10, 10, 5)
    assert float(db_eval_boundary(empty, empty)) == 1.0  # P = R = 1
    assert float(db_eval_boundary(blob, empty)) == 0.0  # empty prediction: P = 1, R = 0
    assert float(db_eval_boundary(empty, blob)) == 0.0  # empty truth: P = 0, R = 1
    assert float(db_eval_boundary(blob, blob)) == 1.0


@pytest.mark.parametrize(("shift", "expected"), [(8, 1.0), (9, None)])
def test_f_tolerance_is_ceil_of_0_008_diagonal_on_davis_frames(shift: int, expected: float | None) -> None:
    # 480x854 frames: ceil(0.008 * 979.6) = 8 px. A square moved by 8 px keeps every boundary
    # pixel within tolerance; moved by 9 px, only the pixels along its top/bottom edges match.
    assert math.ceil(0.008 * math.hypot(480, 854)) == 8
    truth = square((480, 854), 100, 100, 60)
    pred = square((480, 854), 100, 100 + shift, 60)
    value = float(db_eval_boundary(truth, pred))
    if expected is not None:
        assert value == 1.0
    else:
        assert 0.0 < value < 1.0
        assert value == pytest.approx(reference.f_measure(truth, pred))


def test_f_of_a_square_shifted_beyond_the_tolerance_worked_on_paper() -> None:
    # n = 20 square, moved 5 px right, tolerance 2 px (bound_th >= 1 is a radius in pixels).
    # Each boundary ring has 4n = 80 pixels. Unmatched predicted pixels: the 3 rightmost of
    # the top row and of the bottom row (more than 2 px past the truth's corner), and in the
    # n - 1 = 19 rows between them:
    #   right column (19 px): 5 px from the truth's right column, all unmatched;
    #   left column (19 px): 5 px from the truth's left column; only the 2 top and 2 bottom
    #   pixels lie within 2 px of the truth's top/bottom rows -> 15 unmatched.
    # Unmatched = 3 + 3 + 19 + 15 = 40 of 80 -> precision 1/2; recall 1/2 by symmetry; F = 1/2.
    truth = square((60, 60), 10, 10, 20)
    pred = square((60, 60), 10, 15, 20)
    assert float(db_eval_boundary(truth, pred, bound_th=2)) == pytest.approx(0.5)


def test_f_of_one_pixel_objects_and_thin_lines() -> None:
    dot = np.zeros((30, 30), bool)
    dot[12, 12] = True
    assert float(db_eval_boundary(dot, dot, bound_th=2)) == 1.0
    # A dot 4 px away: its 4-pixel ring is at least 3 px from the other's -> nothing matches.
    assert float(db_eval_boundary(dot, np.roll(dot, 4, axis=1), bound_th=2)) == 0.0
    # A 1-px line moved down by one row: no overlap at all (J = 0), yet every boundary
    # pixel is within 1 px of the other's (F = 1).
    line = np.zeros((30, 30), bool)
    line[10, 5:15] = True
    lowered = np.roll(line, 1, axis=0)
    assert float(db_eval_iou(line, lowered)) == 0.0
    assert float(db_eval_boundary(line, lowered, bound_th=1)) == 1.0


def test_f_and_j_match_the_independent_reference_on_random_masks() -> None:
    rng = np.random.default_rng(7)
    frames = 12
    # Blobby random masks: thresholded smoothed noise, plus empty frames for the edge cases.
    noise = rng.random((2 * frames, 48, 64))
    smooth = np.stack([cv2.blur(frame, (5, 5)) for frame in noise]) > 0.5
    truth, pred = smooth[:frames], smooth[frames:]
    truth[3] = False
    pred[4] = False
    truth[5] = pred[5] = False
    got_j = db_eval_iou(truth, pred)
    got_f = db_eval_boundary(truth, pred)
    want_j = [reference.jaccard(t, p) for t, p in zip(truth, pred)]
    want_f = [reference.f_measure(t, p) for t, p in zip(truth, pred)]
    np.testing.assert_allclose(got_j, want_j, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_f, want_f, rtol=0, atol=1e-12)
    # Leading axes are independent: (objects, frames, H, W) gives the same per-pair values.
    stacked = db_eval_boundary(np.stack([truth, pred]), np.stack([pred, truth]))
    np.testing.assert_allclose(stacked[0], want_f, atol=1e-12)


def test_f_stack_larger_than_one_opencv_call() -> None:
    rng = np.random.default_rng(3)
    truth = rng.random((300, 12, 16)) > 0.6
    pred = rng.random((300, 12, 16)) > 0.6
    got = db_eval_boundary(truth, pred)
    want = [reference.f_measure(t, p) for t, p in zip(truth, pred)]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        db_eval_iou(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="shape"):
        db_eval_boundary(np.zeros((4, 4)), np.zeros((5, 4)))


# --- statistics -----------------------------------------------------------------------------


def test_statistics_worked_on_paper() -> None:
    # 8 frames: bin edges round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7] (4.5 rounds up), so
    # the first bin is frames 0..2 and the last frames 5..7.
    values = [1.0, 1.0, 1.0, 0.6, 0.4, 0.0, 0.0, 0.0]
    mean, recall, decay = db_statistics(np.array(values))
    assert mean == pytest.approx(4.0 / 8)
    assert recall == pytest.approx(4 / 8)  # 1, 1, 1, 0.6 exceed 0.5
    assert decay == pytest.approx(1.0 - 0.0)
    # 5 frames: edges [0, 1, 2, 3, 4] -> first bin frames 0..1, last bin frames 3..4.
    mean, recall, decay = db_statistics(np.array([0.9, 0.7, 0.5, 0.3, 0.1]))
    assert (mean, recall) == (pytest.approx(0.5), pytest.approx(2 / 5))
    assert decay == pytest.approx(0.8 - 0.2)


def test_statistics_ignore_nan_in_the_mean() -> None:
    mean, recall, _ = db_statistics(np.array([1.0, np.nan, 0.0, 1.0]))
    assert mean == pytest.approx(2 / 3)
    assert recall == pytest.approx(2 / 4)


def test_statistics_match_the_reference_for_many_lengths() -> None:
    rng = np.random.default_rng(0)
    for length in range(1, 120):
        values = rng.random(length)
        np.testing.assert_allclose(db_statistics(values), reference.statistics(list(values)), atol=1e-12)


# --- image metrics --------------------------------------------------------------------------


def test_mask_iou() -> None:
    truth = square((40, 40), 5, 5, 10)
    assert mask_iou(square((40, 40), 5, 8, 10), truth) == pytest.approx(70 / 130)
    assert mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0


def test_boundary_iou_worked_on_paper() -> None:
    # 100x100 image: band width round(0.02 * 141.4) = 3 px inside each mask.
    truth = square((100, 100), 10, 10, 20)  # band: rows/cols 10..12 and 27..29 -> 400 - 14^2 = 204
    assert boundary_iou(truth, truth) == 1.0
    # 22x22 square at 9..30: band = 484 - 16^2 = 228 px. Shared with the truth's band: the
    # truth square minus 12..27 -> 400 - 256 = 144. Union 228 + 204 - 144 = 288.
    grown = square((100, 100), 9, 9, 22)
    assert boundary_iou(grown, truth) == pytest.approx(144 / 288)
    # A 26x26 square around it: band 7..9 / 30..32, disjoint from the truth's band.
    assert boundary_iou(square((100, 100), 7, 7, 26), truth) == 0.0
    assert mask_iou(square((100, 100), 7, 7, 26), truth) == pytest.approx(400 / 676)


def test_boundary_iou_counts_the_image_edge_as_background() -> None:
    # A full-image mask has a band along the image border: 100^2 - 94^2 pixels.
    full = np.ones((100, 100), bool)
    inner = full.copy()
    inner[3:97, 3:97] = False  # exactly that band, as a mask of its own
    # The band of `inner` is itself (3 px thick everywhere), so both bands coincide.
    assert boundary_iou(full, inner) == 1.0
    assert boundary_iou(np.zeros((9, 9), bool), np.zeros((9, 9), bool)) == 1.0


# --- retrieval metrics ----------------------------------------------------------------------


def test_average_precision_worked_on_paper() -> None:
    # Ranked: pos, neg, pos, neg -> precision 1/1 and 2/3 at the positives -> AP = 5/6.
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # The gallery order does not matter, only the scores.
    assert average_precision(np.array([0.6, 0.7, 0.8, 0.9]), np.array([0, 1, 0, 1])) == pytest.approx(5 / 6)
    assert average_precision(np.array([3.0, 2.0, 1.0]), np.array([True, True, False])) == 1.0


def test_average_precision_with_tied_scores_does_not_depend_on_order() -> None:
    # One threshold holding a positive and a negative: precision 1/2 at recall 1.
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)
    assert average_precision(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)


def test_recall_at_k() -> None:
    scores = np.array([0.2, 0.9, 0.5, 0.7])
    positives = np.array([1, 0, 0, 0])  # ranked 4th
    assert [recall_at_k(scores, positives, k) for k in (1, 3, 4, 10)] == [0.0, 0.0, 1.0, 1.0]


def test_retrieval_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="positive"):
        average_precision(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="scores"):
        recall_at_k(np.array([0.1, 0.2]), np.array([1]), 1)
    with pytest.raises(ValueError, match="k"):
        recall_at_k(np.array([0.1]), np.array([1]), 0)
