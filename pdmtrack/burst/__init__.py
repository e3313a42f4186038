"""BURST reader and the PerMIR / PerMIS benchmark builder (the paper's personalised benchmarks).

Selection rule (the paper's and the authors' builder): a video qualifies when at least two
of its tracks share a category. For each track of such a category, count the annotated
frames where it and at least one other track of its category are present (non-empty
mask); the track with the most such frames is chosen (ties: the lower track id). Those
multi-instance frames are sorted by the track's tight-box area, largest first (equal areas:
the earlier frame first; the box area is (x_max - x_min + 1) * (y_max - y_min + 1) pixels,
and since every frame of a video has the same size this orders the box-to-image ratio
too). The largest is kept, then the next two whose annotated-frame index differs from the
largest's by more than 15; videos with fewer than 3 such frames are skipped.

The output is deterministic: the same BURST input and settings give a byte-identical tree.

Modules: ``records`` (constants, drop reasons), ``reading`` (BURST files), ``selection`` (the
rule above), ``writing`` (the output tree) and ``builder`` (``build_permirs``).
"""

from pdmtrack.burst.builder import build_permirs
from pdmtrack.burst.records import (
    DROP_REASONS,
    DROPPED_SOURCE,
    DUPLICATE,
    FRAMES_MISSING,
    MALFORMED,
    NO_SHARED_CATEGORY,
    PERMIS_VIDEO_CLASSES,
    PERMIS_VIDEO_DIR,
    PERMIS_VIDEO_SPLIT,
    TOO_FEW_FRAMES,
    UNSAFE_NAME,
    BuildSummary,
)
from pdmtrack.burst.selection import choose_frames, choose_track, select

__all__ = [
    "DROP_REASONS",
    "DROPPED_SOURCE",
    "DUPLICATE",
    "FRAMES_MISSING",
    "MALFORMED",
    "NO_SHARED_CATEGORY",
    "PERMIS_VIDEO_CLASSES",
    "PERMIS_VIDEO_DIR",
    "PERMIS_VIDEO_SPLIT",
    "TOO_FEW_FRAMES",
    "UNSAFE_NAME",
    "BuildSummary",
    "build_permirs",
    "choose_frames",
    "choose_track",
    "select",
]
