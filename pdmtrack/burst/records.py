"""Constants, drop reasons and the records the PerMIR/PerMIS builder passes around."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SPLITS = ("train", "val", "test")
DEFAULT_DROPPED_SOURCES = frozenset({"HACS", "AVA", "LaSOT"})  # the authors drop these BURST sources
MIN_FRAME_GAP = 15  # a kept frame lies more than this many annotated frames from the largest
FRAMES_PER_VIDEO = 3
PERMIS_VIDEO_DIR = "permis-video"  # DAVIS-layout tree of PerMIS-video inside the output
PERMIS_VIDEO_SPLIT = "val"  # its ImageSets/2017/<split>.txt
PERMIS_VIDEO_CLASSES = "classes.json"  # {"<video>": "<category name>"} for `eval davis --class-map`

# Why a sequence was not kept (BuildSummary.dropped keys, in the order they are checked).
UNSAFE_NAME = "unsafe name (absolute, '..' or a path separator)"
DROPPED_SOURCE = "dropped source"
NO_SHARED_CATEGORY = "fewer than two tracks of one category"
MALFORMED = "malformed annotation (bad RLE or fields)"
TOO_FEW_FRAMES = f"fewer than {FRAMES_PER_VIDEO} distant multi-instance frames"
FRAMES_MISSING = "frames missing, unreadable or of the wrong size"
DUPLICATE = "duplicate entry (same split and id, or same frames folder, as an earlier one)"
DROP_REASONS = (DUPLICATE, UNSAFE_NAME, DROPPED_SOURCE, NO_SHARED_CATEGORY, MALFORMED, TOO_FEW_FRAMES, FRAMES_MISSING)


@dataclass
class BuildSummary:
    """What ``build_permirs`` kept, what it dropped and why, and the kept set's statistics."""

    out_dir: Path
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    class_histogram: dict[str, int] = field(default_factory=dict)
    instances_in_chosen_frames: int = 0  # annotated instances summed over the kept frames
    splits: list[str] = field(default_factory=list)  # the splits read
    missing_splits: list[str] = field(default_factory=list)  # default splits not downloaded

    @property
    def mean_instances_per_frame(self) -> float:
        """Annotated instances (every track present) per chosen frame, over all kept videos."""
        frames = self.kept * FRAMES_PER_VIDEO
        return self.instances_in_chosen_frames / frames if frames else 0.0

    def to_dict(self) -> dict:
        """Plain-JSON view (written into the manifest)."""
        return {
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "classes": len(self.class_histogram),
            "class_histogram": dict(sorted(self.class_histogram.items())),
            "mean_instances_per_frame": round(self.mean_instances_per_frame, 4),
        }

    def format(self) -> str:
        """Multi-line human summary (the paper: 150 videos, 16 classes, 3.1 instances per frame)."""
        lines = [
            f"kept {self.kept} videos, {len(self.class_histogram)} classes, "
            f"{self.mean_instances_per_frame:.2f} instances per frame -> {self.out_dir}",
            f"dropped {sum(self.dropped.values())}:",
        ]
        lines += [f"  {count:6d}  {reason}" for reason, count in self.dropped.items()]
        lines.append("classes:")
        by_count = sorted(self.class_histogram.items(), key=lambda item: (-item[1], item[0]))
        lines += [f"  {count:6d}  {name}" for name, count in by_count]
        if self.missing_splits:
            lines.append(
                f"note: built from split(s) {', '.join(self.splits)} only ({', '.join(self.missing_splits)} "
                f"not found under annotations/); the paper's counts need all of {', '.join(DEFAULT_SPLITS)}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class Selection:
    """The chosen track of a video and its 3 chosen annotated-frame indices (query first)."""

    track_id: int
    category_id: int
    frames: tuple[int, ...]
    first_appearance: int  # first annotated frame where the track is present


class Skip(Exception):
    """A sequence that does not go into the benchmark, with the reason counted for it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
