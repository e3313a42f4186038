"""The paper's selection rule: which track of a BURST video and which 3 frames."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from pdmtrack.burst.records import FRAMES_PER_VIDEO, MIN_FRAME_GAP, NO_SHARED_CATEGORY, TOO_FEW_FRAMES, Selection, Skip


def bbox_area(mask: np.ndarray) -> int:
    """Pixels of the mask's tight box, (x_max - x_min + 1) * (y_max - y_min + 1); 0 when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return 0
    cols = np.flatnonzero(mask.any(axis=0))
    return int((cols[-1] - cols[0] + 1) * (rows[-1] - rows[0] + 1))


def choose_track(present: list[dict[int, int]], track_categories: dict[int, int]) -> tuple[int, list[int]] | None:
    """The track with the most frames shared with another track of its category.

    ``present[i]`` maps the tracks present in annotated frame i to their box areas. Returns
    (track id, its multi-instance frame indices) or None when no category has two tracks.
    """
    per_category = Counter(track_categories.values())
    candidates = sorted(tid for tid, cat in track_categories.items() if per_category[cat] >= 2)
    if not candidates:
        return None
    shared: dict[int, list[int]] = {tid: [] for tid in candidates}
    for index, tracks in enumerate(present):
        counts = Counter(track_categories[tid] for tid in tracks if tid in track_categories)
        for tid in tracks:
            if tid in shared and counts[track_categories[tid]] >= 2:
                shared[tid].append(index)
    best = min(candidates, key=lambda tid: (-len(shared[tid]), tid))
    return best, shared[best]


def choose_frames(areas: dict[int, int], gap: int = MIN_FRAME_GAP) -> tuple[int, ...] | None:
    """The largest-area frame, then the next two (by area) more than ``gap`` frames from it.

    ``areas`` maps annotated-frame index -> box area. Equal areas keep the earlier frame
    first. None when fewer than 3 frames qualify.
    """
    if not areas:
        return None
    ordered = sorted(areas, key=lambda index: (-areas[index], index))
    largest = ordered[0]
    distant = [index for index in ordered[1:] if abs(index - largest) > gap]
    if len(distant) < FRAMES_PER_VIDEO - 1:
        return None
    return (largest, *distant[: FRAMES_PER_VIDEO - 1])


@dataclass(frozen=True)
class ScannedSequence:
    """What the selection needs of a sequence, with every RLE checked."""

    present: list[dict[int, int]]  # per annotated frame, {track id: box area} of non-empty masks
    track_categories: dict[int, int]  # track id -> category id


def select(scan: ScannedSequence) -> Selection:
    """Apply the selection rule to a scanned sequence; ``Skip`` when it does not qualify."""
    masks_present, track_categories = scan.present, scan.track_categories
    chosen = choose_track(masks_present, track_categories)
    if chosen is None:
        raise Skip(NO_SHARED_CATEGORY)
    track_id, shared_frames = chosen
    frames = choose_frames({index: masks_present[index][track_id] for index in shared_frames})
    if frames is None:
        raise Skip(TOO_FEW_FRAMES)
    first = min(index for index, tracks in enumerate(masks_present) if track_id in tracks)
    return Selection(track_id, track_categories[track_id], frames, first)
