"""Reading BURST: annotation files, sequences and their masks, frame paths."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pdmtrack.burst.records import FRAMES_MISSING, MALFORMED, UNSAFE_NAME, Skip
from pdmtrack.burst.selection import ScannedSequence, bbox_area
from pdmtrack.errors import InputError
from pdmtrack.io.files import is_safe_component, read_json
from pdmtrack.io.masks import decode_rle

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def _rle(sequence: dict, entry: object) -> dict:
    if not isinstance(entry, dict) or not isinstance(entry.get("rle"), str):
        raise ValueError("a segmentation needs an 'rle' string")
    return {"size": [sequence["height"], sequence["width"]], "counts": entry["rle"]}


def decode(sequence: dict, entry: object) -> np.ndarray:
    return decode_rle(_rle(sequence, entry))


def scan_sequence(sequence: dict) -> ScannedSequence:
    """Box areas of every non-empty mask per annotated frame (all RLEs decoded), track categories.

    Raises ``Skip(MALFORMED)`` on a bad RLE or inconsistent fields. Masks are decoded one
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
                area = bbox_area(decode(sequence, entry))
                if area:
                    areas[int(tid)] = area
            present.append(areas)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise Skip(MALFORMED) from None
    return ScannedSequence(present, track_categories)


def load_annotation(path: Path) -> dict:
    data = read_json(path, "BURST annotation file not found")
    if not isinstance(data, dict) or not isinstance(data.get("sequences"), list):
        raise InputError(path, "not a BURST annotation file (no 'sequences' list)")
    categories = data.get("categories")
    if not isinstance(categories, list) or not all(
        isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str) for c in categories
    ):
        raise InputError(path, 'not a BURST annotation file (\'categories\' must list {"id": int, "name": str})')
    return data


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sequence_frame_paths(frames_dir: Path, sequence: dict) -> list[Path]:
    """The annotated frames on disk, checked to exist with the annotation's size."""
    names = sequence["annotated_image_paths"]
    if not all(is_safe_component(name) for name in names):
        raise Skip(UNSAFE_NAME)
    paths = [frames_dir / name for name in names]
    expected = (sequence["width"], sequence["height"])
    for path in paths:
        try:
            with Image.open(path) as image:
                if image.size != expected:
                    raise Skip(FRAMES_MISSING)
        except (OSError, UnidentifiedImageError):
            raise Skip(FRAMES_MISSING) from None
    return paths


def video_name(split: str, sequence: dict) -> str:
    """A safe, unique folder name: ``<split>_<id>_<dataset>_<seq_name>`` with odd characters as '_'."""
    slug = _SAFE_CHARS.sub("_", f"{sequence['dataset']}_{sequence['seq_name']}").strip("._")[:80]
    return f"{_SAFE_CHARS.sub('_', split)}_{int(sequence['id']):06d}_{slug}"
