"""BURST reader and the PerMIR / PerMIS benchmark builder (DESIGN section 7).

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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pdmtrack.errors import InputError
from pdmtrack.fsutil import atomic_path, atomic_write_bytes, atomic_write_text
from pdmtrack.masks import decode_rle, encode_rle
from pdmtrack.writers import write_palette_png

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
DROP_REASONS = (UNSAFE_NAME, DROPPED_SOURCE, NO_SHARED_CATEGORY, MALFORMED, TOO_FEW_FRAMES, FRAMES_MISSING)

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class BuildSummary:
    """What ``build_permirs`` kept, what it dropped and why, and the kept set's statistics."""

    out_dir: Path
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    class_histogram: dict[str, int] = field(default_factory=dict)
    instances_in_chosen_frames: int = 0  # annotated instances summed over the kept frames

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
        return "\n".join(lines)


@dataclass(frozen=True)
class Selection:
    """The chosen track of a video and its 3 chosen annotated-frame indices (query first)."""

    track_id: int
    category_id: int
    frames: tuple[int, ...]
    first_appearance: int  # first annotated frame where the track is present


class _Skip(Exception):
    """A sequence that does not go into the benchmark, with the reason counted for it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# --------------------------------------------------------------------------- selection
def bbox_area(mask: np.ndarray) -> int:
    """Pixels of the mask's tight box, (x_max - x_min + 1) * (y_max - y_min + 1); 0 when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return 0
    cols = np.flatnonzero(mask.any(axis=0))
    return int((cols[-1] - cols[0] + 1) * (rows[-1] - rows[0] + 1))


def choose_track(
    present: list[dict[int, int]], track_categories: dict[int, int]
) -> tuple[int, list[int]] | None:
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
    """Apply the selection rule to a scanned sequence; ``_Skip`` when it does not qualify."""
    masks_present, track_categories = scan.present, scan.track_categories
    chosen = choose_track(masks_present, track_categories)
    if chosen is None:
        raise _Skip(NO_SHARED_CATEGORY)
    track_id, shared_frames = chosen
    frames = choose_frames({index: masks_present[index][track_id] for index in shared_frames})
    if frames is None:
        raise _Skip(TOO_FEW_FRAMES)
    first = min(index for index, tracks in enumerate(masks_present) if track_id in tracks)
    return Selection(track_id, track_categories[track_id], frames, first)


# --------------------------------------------------------------------------- reading
def _is_safe_component(name: object) -> bool:
    """A single relative path component: no separator, not '.', '..', empty or absolute."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        return False
    return "/" not in name and "\\" not in name and "\x00" not in name and not PurePosixPath(name).is_absolute()


def _rle(sequence: dict, entry: object) -> dict:
    if not isinstance(entry, dict) or not isinstance(entry.get("rle"), str):
        raise ValueError("a segmentation needs an 'rle' string")
    return {"size": [sequence["height"], sequence["width"]], "counts": entry["rle"]}


def _decode(sequence: dict, entry: object) -> np.ndarray:
    return decode_rle(_rle(sequence, entry))


def scan_sequence(sequence: dict) -> ScannedSequence:
    """Box areas of every non-empty mask per annotated frame (all RLEs decoded), track categories.

    Raises ``_Skip(MALFORMED)`` on a bad RLE or inconsistent fields. Masks are decoded one
    at a time, so memory stays flat in the video length.
    """
    try:
        height, width = sequence["height"], sequence["width"]
        paths, segmentations = sequence["annotated_image_paths"], sequence["segmentations"]
        if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
            raise ValueError("height and width must be positive integers")
        if not isinstance(segmentations, list) or len(segmentations) != len(paths):
            raise ValueError("segmentations do not align with annotated_image_paths")
        track_categories = {int(tid): int(cat) for tid, cat in sequence["track_category_ids"].items()}
        present = []
        for frame in segmentations:
            areas = {}
            for tid, entry in frame.items():
                area = bbox_area(_decode(sequence, entry))
                if area:
                    areas[int(tid)] = area
            present.append(areas)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _Skip(MALFORMED) from None
    return ScannedSequence(present, track_categories)


def _load_annotation(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "BURST annotation file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"not a readable JSON file ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("sequences"), list):
        raise InputError(path, "not a BURST annotation file (no 'sequences' list)")
    categories = data.get("categories")
    if not isinstance(categories, list) or not all(
        isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str) for c in categories
    ):
        raise InputError(path, "not a BURST annotation file ('categories' must list {\"id\": int, \"name\": str})")
    return data


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _frame_paths(frames_dir: Path, sequence: dict) -> list[Path]:
    """The annotated frames on disk, checked to exist with the annotation's size."""
    names = sequence["annotated_image_paths"]
    if not all(_is_safe_component(name) for name in names):
        raise _Skip(UNSAFE_NAME)
    paths = [frames_dir / name for name in names]
    expected = (sequence["width"], sequence["height"])
    for path in paths:
        try:
            with Image.open(path) as image:
                if image.size != expected:
                    raise _Skip(FRAMES_MISSING)
        except (OSError, UnidentifiedImageError):
            raise _Skip(FRAMES_MISSING) from None
    return paths


def video_name(split: str, sequence: dict) -> str:
    """A safe, unique folder name: ``<split>_<id>_<dataset>_<seq_name>`` with odd characters as '_'."""
    slug = _SAFE_CHARS.sub("_", f"{sequence['dataset']}_{sequence['seq_name']}").strip("._")[:80]
    return f"{_SAFE_CHARS.sub('_', split)}_{int(sequence['id']):06d}_{slug}"


# --------------------------------------------------------------------------- writing
def _write_json(path: Path, payload: object) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _write_jpeg(source: Path, target: Path) -> None:
    """Copy a JPEG byte for byte; convert anything else to JPEG (quality 95)."""
    if source.suffix.lower() in (".jpg", ".jpeg"):
        atomic_write_bytes(target, source.read_bytes())
        return
    with Image.open(source) as image:
        rgb = image.convert("RGB")
    with atomic_path(target) as tmp:
        rgb.save(tmp, format="JPEG", quality=95)


@dataclass(frozen=True)
class _Kept:
    """One kept video as the manifest and the split lists record it."""

    name: str
    record: dict


def _write_video(
    tree: Path,
    name: str,
    split: str,
    sequence: dict,
    frame_paths: list[Path],
    selection: Selection,
    track_categories: dict[int, int],
    categories: dict[int, str],
) -> tuple[dict, int]:
    """Write one kept video (chosen frames + RLE masks, PerMIS-video tree); return its manifest
    record and the number of instances in its chosen frames."""
    video_dir = tree / "videos" / name
    chosen, frame_records = [], []
    instances = 0
    for role_index, frame_index in enumerate(selection.frames):
        source = frame_paths[frame_index]
        atomic_write_bytes(video_dir / "frames" / source.name, source.read_bytes())
        objects, track_area = {}, 0
        for tid, entry in sorted(sequence["segmentations"][frame_index].items(), key=lambda kv: int(kv[0])):
            mask = _decode(sequence, entry)
            if not mask.any():
                continue
            category_id = track_categories.get(int(tid))
            objects[str(int(tid))] = {
                "category_id": category_id,
                "category": categories.get(category_id),
                "rle": encode_rle(mask),
            }
            if int(tid) == selection.track_id:
                track_area = int(mask.sum())
        instances += len(objects)
        frame = {
            "role": "query" if role_index == 0 else "gallery",
            "annotated_index": frame_index,
            "frame": f"videos/{name}/frames/{source.name}",
            "mask_area": track_area,
        }
        frame_records.append(frame | {"source_file": source.name})
        chosen.append(frame | {"objects": objects})
    masks = {"height": sequence["height"], "width": sequence["width"], "track_id": selection.track_id, "frames": chosen}
    _write_json(video_dir / "masks.json", masks)
    _write_permis_video(tree / PERMIS_VIDEO_DIR, name, sequence, frame_paths, selection)
    record = {
        "video": name,
        "split": split,
        "dataset": sequence["dataset"],
        "seq_name": sequence["seq_name"],
        "sequence_id": sequence["id"],
        "height": sequence["height"],
        "width": sequence["width"],
        "category_id": selection.category_id,
        "category": categories.get(selection.category_id),
        "track_id": selection.track_id,
        "frames": frame_records,
        "masks": f"videos/{name}/masks.json",
        "permis_video_frames": len(frame_paths) - selection.first_appearance,
    }
    return record, instances


def _write_permis_video(
    root: Path, name: str, sequence: dict, frame_paths: list[Path], selection: Selection
) -> None:
    """JPEGImages/480p/<name>/ and Annotations/480p/<name>/ (the chosen track as id 1) from the
    track's first appearance to the last annotated frame; frames renamed 00000, 00001, ..."""
    track = str(selection.track_id)
    for out_index, frame_index in enumerate(range(selection.first_appearance, len(frame_paths))):
        stem = f"{out_index:05d}"
        _write_jpeg(frame_paths[frame_index], root / "JPEGImages" / "480p" / name / f"{stem}.jpg")
        entry = sequence["segmentations"][frame_index].get(track)
        labels = np.zeros((sequence["height"], sequence["width"]), dtype=np.uint8)
        if entry is not None:
            labels[_decode(sequence, entry)] = 1
        write_palette_png(root / "Annotations" / "480p" / name / f"{stem}.png", labels)


def _write_lists(tree: Path, kept: list[_Kept]) -> None:
    """PerMIR query/gallery lists, PerMIS-image pairs, and PerMIS-video's split and class map."""
    queries, gallery, pairs = [], [], []
    for video in kept:
        frames = video.record["frames"]
        base = {"video": video.name, "category": video.record["category"], "track_id": video.record["track_id"]}
        queries.append(base | {"frame": frames[0]["frame"], "masks": video.record["masks"]})
        for target in frames[1:]:
            gallery.append({"video": video.name, "frame": target["frame"]})
            pair = {"reference": frames[0]["frame"], "target": target["frame"], "masks": video.record["masks"]}
            pairs.append(base | pair)
    _write_json(tree / "permir.json", {"queries": queries, "gallery": gallery})
    _write_json(tree / "permis_image.json", {"pairs": pairs})
    video_root = tree / PERMIS_VIDEO_DIR
    split_file = video_root / "ImageSets" / "2017" / f"{PERMIS_VIDEO_SPLIT}.txt"
    atomic_write_text(split_file, "".join(f"{video.name}\n" for video in kept))
    _write_json(video_root / PERMIS_VIDEO_CLASSES, {v.name: v.record["category"] for v in kept})


README = """# PerMIR / PerMIS benchmark built from BURST by `pdmtrack build-permis`

Built deterministically: the same BURST input and settings give byte-identical files.

## Selection
A BURST video qualifies when at least two of its tracks share a category. Of those tracks,
the one present (non-empty mask) together with another track of its category in the most
annotated frames is chosen (ties: the lower track id). Those multi-instance frames are
ordered by the track's tight-box area, (x_max - x_min + 1) * (y_max - y_min + 1) pixels,
largest first (ties: the earlier frame). The largest is the query frame; the next two whose
annotated-frame index differs from the query's by more than {gap} are the other two. Videos
with fewer than 3 such frames, from dropped sources ({dropped}), with missing frames or
malformed annotations are skipped; `manifest.json` counts them per reason.

## Files
- `manifest.json`: the annotation files and their sha256, the settings, the summary and one
  record per video (split, dataset, seq_name, category, track id, chosen frames).
- `videos/<video>/frames/`: the 3 chosen frames, copied byte for byte from BURST.
- `videos/<video>/masks.json`: per chosen frame (query first) the COCO RLE
  (`{{"size": [H, W], "counts": str}}`, pycocotools) of every annotated instance, keyed by
  BURST track id, with its category.
- `permir.json`: PerMIR. `queries`: per video its query frame (the chosen track's largest
  box) and the track id; `gallery`: the other two frames of every video. A query's
  positives are the gallery frames of its own video.
- `permis_image.json`: PerMIS-image. `pairs`: reference (query frame + the track's mask) and
  target frame (segment the same instance there).
- `{video_dir}/`: PerMIS-video in the DAVIS 2017 layout (`JPEGImages/480p/<video>/*.jpg`,
  `Annotations/480p/<video>/*.png` indexed PNGs with the chosen track as id 1,
  `ImageSets/2017/{split}.txt`), every annotated frame from the track's first appearance on,
  renamed 00000, 00001, ... at BURST's resolution. `{classes}` maps each video to its
  category (for `--class-map`). `pdmtrack eval davis --root <this folder>/{video_dir} --split {split}`
  scores it, as does `pdmtrack eval permis --task video`.
"""


# --------------------------------------------------------------------------- the builder
def _annotation_files(burst_root: Path, splits: Iterable[str], annotations: list[Path] | None) -> list[Path]:
    if annotations:
        files = [Path(path) for path in annotations]
    else:
        for split in splits:
            if not _is_safe_component(split):
                raise InputError("--splits", f"'{split}' is not a split name")
        files = [burst_root / "annotations" / split / "all_classes.json" for split in splits]
    for path in files:
        if not path.is_file():
            raise InputError(path, "BURST annotation file not found")
    return files


def _split_of(path: Path, data: dict) -> str:
    split = data.get("split")
    split = split if isinstance(split, str) else path.parent.name
    if not _is_safe_component(split):
        raise InputError(path, f"split '{split}' is not a usable folder name")
    return split


def _recorded_path(path: Path, burst_root: Path) -> str:
    try:
        return path.resolve().relative_to(burst_root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _prepare_out_dir(out_dir: Path, overwrite: bool, inputs: list[Path]) -> Path:
    """A fresh staging folder beside ``out_dir`` (after checking ``out_dir`` may be written:
    it holds none of ``inputs`` and, if it exists, is an earlier build-permis output)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output exists and is not a folder")
    resolved = out_dir.resolve()
    for source in inputs:
        if source.resolve() == resolved or resolved in source.resolve().parents:
            raise InputError(out_dir, f"output folder would contain the input {source}; choose another -o")
    if out_dir.exists() and not overwrite:
        raise InputError(out_dir, "output folder exists (pass --overwrite to replace it)")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
        raise InputError(out_dir, "exists and was not written by build-permis (no manifest.json); refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".building", dir=out_dir.parent))


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Put the finished ``staging`` tree at ``out_dir``, replacing an old one cleanly."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        os.replace(out_dir, old / "tree")
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old)


def build_permirs(
    burst_root: Path,
    out_dir: Path,
    *,
    splits: Iterable[str] = DEFAULT_SPLITS,
    annotations: list[Path] | None = None,
    drop_sources: Iterable[str] = DEFAULT_DROPPED_SOURCES,
    overwrite: bool = False,
) -> BuildSummary:
    """Build PerMIR / PerMIS from a BURST folder into ``out_dir`` (see the module docstring).

    ``annotations`` replaces ``annotations/<split>/all_classes.json`` of each split; a file's
    split (for ``frames/<split>/``) is its ``split`` field, else its folder's name.
    ``drop_sources`` lists the BURST datasets left out (case-insensitive; empty keeps all).
    The tree is built in a folder beside ``out_dir`` and moved into place when complete; an
    existing ``out_dir`` is an ``InputError`` unless ``overwrite``.
    """
    burst_root, out_dir = Path(burst_root), Path(out_dir)
    splits = list(splits)
    drop_sources = sorted(set(drop_sources))
    dropped_sources = {name.casefold() for name in drop_sources}
    files = _annotation_files(burst_root, splits, annotations)
    loaded = [(path, _load_annotation(path)) for path in files]
    staging = _prepare_out_dir(out_dir, overwrite, [burst_root, *files])
    try:
        summary = BuildSummary(out_dir=out_dir)
        kept = _build_tree(staging, burst_root, loaded, dropped_sources, summary)
        _write_lists(staging, kept)
        settings = {
            "drop_sources": drop_sources,
            "frames_per_video": FRAMES_PER_VIDEO,
            "min_frame_gap": MIN_FRAME_GAP,
            "splits": [_split_of(path, data) for path, data in loaded],
        }
        sources = [{"path": _recorded_path(path, burst_root), "sha256": _sha256(path)} for path, _ in loaded]
        manifest = {
            "annotation_files": sources,
            "settings": settings,
            "summary": summary.to_dict(),
            "videos": [video.record for video in kept],
        }
        _write_json(staging / "manifest.json", manifest)
        readme = README.format(
            gap=MIN_FRAME_GAP,
            dropped=", ".join(drop_sources) or "none",
            video_dir=PERMIS_VIDEO_DIR,
            split=PERMIS_VIDEO_SPLIT,
            classes=PERMIS_VIDEO_CLASSES,
        )
        atomic_write_text(staging / "README.md", readme)
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _build_tree(
    tree: Path, burst_root: Path, loaded: list[tuple[Path, dict]], dropped_sources: set[str], summary: BuildSummary
) -> list[_Kept]:
    """Select and write every qualifying sequence; count the others in ``summary``."""
    kept: list[_Kept] = []
    total = sum(len(data["sequences"]) for _, data in loaded)
    with tqdm(total=total, desc="build-permis", unit="seq", disable=None) as bar:
        for path, data in loaded:
            split = _split_of(path, data)
            categories = {c["id"]: c["name"] for c in data["categories"]}
            for sequence in sorted(data["sequences"], key=_sequence_order):
                bar.update(1)
                try:
                    kept.append(_keep(tree, burst_root, split, sequence, dropped_sources, categories, summary))
                except _Skip as skip:
                    summary.dropped[skip.reason] += 1
    return sorted(kept, key=lambda video: video.name)


def _sequence_order(sequence: object) -> tuple[int, str]:
    if isinstance(sequence, dict) and isinstance(sequence.get("id"), int):
        return sequence["id"], ""
    return -1, json.dumps(sequence, sort_keys=True, default=str)


def _keep(
    tree: Path,
    burst_root: Path,
    split: str,
    sequence: object,
    dropped_sources: set[str],
    categories: dict[int, str],
    summary: BuildSummary,
) -> _Kept:
    """Check, select and write one sequence; ``_Skip`` with the reason when it is not kept."""
    if not isinstance(sequence, dict) or not isinstance(sequence.get("id"), int):
        raise _Skip(MALFORMED)
    dataset, seq_name = sequence.get("dataset"), sequence.get("seq_name")
    if not (_is_safe_component(dataset) and _is_safe_component(seq_name)):
        raise _Skip(UNSAFE_NAME)
    if dataset.casefold() in dropped_sources:
        raise _Skip(DROPPED_SOURCE)
    scan = scan_sequence(sequence)
    selection = select(scan)
    frame_paths = _frame_paths(burst_root / "frames" / split / dataset / seq_name, sequence)
    name = video_name(split, sequence)
    record, instances = _write_video(
        tree, name, split, sequence, frame_paths, selection, scan.track_categories, categories
    )
    summary.kept += 1
    summary.instances_in_chosen_frames += instances
    category = record["category"] or str(selection.category_id)
    summary.class_histogram[category] = summary.class_histogram.get(category, 0) + 1
    return _Kept(name, record)
