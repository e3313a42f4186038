"""``build_permirs``: BURST in, a deterministic PerMIR/PerMIS tree out."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from pdmtrack.burst.reading import load_annotation, scan_sequence, sequence_frame_paths, sha256, video_name
from pdmtrack.burst.records import (
    DEFAULT_DROPPED_SOURCES,
    DEFAULT_SPLITS,
    DROPPED_SOURCE,
    DUPLICATE,
    FRAMES_PER_VIDEO,
    MALFORMED,
    MIN_FRAME_GAP,
    PERMIS_VIDEO_CLASSES,
    PERMIS_VIDEO_DIR,
    PERMIS_VIDEO_SPLIT,
    UNSAFE_NAME,
    BuildSummary,
    Skip,
)
from pdmtrack.burst.selection import select
from pdmtrack.burst.writing import README, Kept, write_json, write_lists, write_video
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.io.files import atomic_write_text, check_output_folder, ensure_writable_folder, is_safe_component


def _annotation_file(burst_root: Path, split: str) -> Path:
    return burst_root / "annotations" / split / "all_classes.json"


def _annotation_files(burst_root: Path, splits: Iterable[str] | None, annotations: list[Path] | None) -> tuple[list[Path], list[str]]:
    """(annotation files to read, default splits left out because they are not there).

    ``splits`` None: those of train, val, test that are present (none present is an error);
    named splits must all be present."""
    missing: list[str] = []
    if annotations:
        files = [Path(path) for path in annotations]
    elif splits is None:
        present = [split for split in DEFAULT_SPLITS if _annotation_file(burst_root, split).is_file()]
        if not present:
            where = _annotation_file(burst_root, "{" + ",".join(DEFAULT_SPLITS) + "}")
            raise InputError(where, "no BURST annotation file found (download at least one split)")
        missing = [split for split in DEFAULT_SPLITS if split not in present]
        files = [_annotation_file(burst_root, split) for split in present]
    else:
        if not splits:
            raise ParameterError("splits", "names no split")
        for split in splits:
            if not is_safe_component(split):
                raise ParameterError("splits", f"'{split}' is not a split name")
        files = [_annotation_file(burst_root, split) for split in splits]
    for path in files:
        if not path.is_file():
            raise InputError(path, "BURST annotation file not found")
    return files, missing


def _split_of(path: Path, data: dict) -> str:
    split = data.get("split")
    split = split if isinstance(split, str) else path.parent.name
    if not is_safe_component(split):
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
    check_output_folder(out_dir, inputs)
    if out_dir.exists() and not overwrite:
        raise InputError(out_dir, "output folder exists (pass --overwrite to replace it)")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
        raise InputError(out_dir, "exists and was not written by build-permis (no manifest.json); refusing to replace it")
    ensure_writable_folder(out_dir.parent)
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
    burst_root: str | Path,
    out_dir: str | Path,
    *,
    splits: Iterable[str] | None = None,
    annotations: list[str | Path] | None = None,
    drop_sources: Iterable[str] = DEFAULT_DROPPED_SOURCES,
    overwrite: bool = False,
) -> BuildSummary:
    """Build PerMIR / PerMIS from a BURST folder into ``out_dir`` (see the module docstring).

    ``splits`` None reads those of train, val and test whose annotation file is present (the
    summary names the missing ones); named splits must all be present.
    ``annotations`` replaces ``annotations/<split>/all_classes.json`` of each split; a file's
    split (for ``frames/<split>/``) is its ``split`` field, else its folder's name.
    ``drop_sources`` lists the BURST datasets left out (case-insensitive; empty keeps all).
    The tree is built in a folder beside ``out_dir`` and moved into place when complete; an
    existing ``out_dir`` is an ``InputError`` unless ``overwrite``.
    """
    burst_root, out_dir = Path(burst_root), Path(out_dir)
    drop_sources = sorted(set(drop_sources))
    dropped_sources = {name.casefold() for name in drop_sources}
    files, missing_splits = _annotation_files(burst_root, None if splits is None else list(splits), annotations)
    loaded = [(path, load_annotation(path)) for path in files]
    # what is read: the frames and the annotations (an output beside them in the BURST root is fine)
    staging = _prepare_out_dir(out_dir, overwrite, [burst_root / "frames", burst_root / "annotations", *files])
    try:
        used = [_split_of(path, data) for path, data in loaded]
        summary = BuildSummary(out_dir=out_dir, splits=used, missing_splits=missing_splits)
        kept = _build_tree(staging, burst_root, loaded, dropped_sources, summary)
        write_lists(staging, kept)
        settings = {
            "drop_sources": drop_sources,
            "frames_per_video": FRAMES_PER_VIDEO,
            "min_frame_gap": MIN_FRAME_GAP,
            "splits": summary.splits,
        }
        sources = [{"path": _recorded_path(path, burst_root), "sha256": sha256(path)} for path, _ in loaded]
        manifest = {
            "annotation_files": sources,
            "settings": settings,
            "summary": summary.to_dict(),
            "videos": [video.record for video in kept],
        }
        write_json(staging / "manifest.json", manifest)
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
) -> list[Kept]:
    """Select and write every qualifying sequence; count the others in ``summary``."""
    kept: list[Kept] = []
    seen: set[tuple] = set()
    total = sum(len(data["sequences"]) for _, data in loaded)
    with tqdm(total=total, desc="build-permis", unit="seq", disable=None) as bar:
        for path, data in loaded:
            split = _split_of(path, data)
            categories = {c["id"]: c["name"] for c in data["categories"]}
            for sequence in sorted(data["sequences"], key=_sequence_order):
                bar.update(1)
                try:
                    _check_first_entry(split, sequence, seen)
                    kept.append(_keep(tree, burst_root, split, sequence, dropped_sources, categories, summary))
                except Skip as skip:
                    summary.dropped[skip.reason] += 1
    return sorted(kept, key=lambda video: video.name)


def _check_first_entry(split: str, sequence: object, seen: set[tuple]) -> None:
    """``Skip(DUPLICATE)`` for an entry whose (split, id) or frames folder (split, dataset,
    seq_name) an earlier entry had: one video must not be counted twice."""
    if not isinstance(sequence, dict):
        return
    keys = {("id", split, repr(sequence.get("id"))), ("frames", split, repr(sequence.get("dataset")), repr(sequence.get("seq_name")))}
    if keys & seen:
        raise Skip(DUPLICATE)
    seen.update(keys)


def _sequence_order(sequence: object) -> tuple[int, str]:
    if isinstance(sequence, dict) and isinstance(sequence.get("id"), int):
        return sequence["id"], ""
    return -1, json.dumps(sequence, sort_keys=True, default=str)


def _keep(
    tree: Path, burst_root: Path, split: str, sequence: object, dropped_sources: set[str], categories: dict[int, str], summary: BuildSummary
) -> Kept:
    """Check, select and write one sequence; ``Skip`` with the reason when it is not kept."""
    if not isinstance(sequence, dict) or not isinstance(sequence.get("id"), int):
        raise Skip(MALFORMED)
    dataset, seq_name = sequence.get("dataset"), sequence.get("seq_name")
    if not (is_safe_component(dataset) and is_safe_component(seq_name)):
        raise Skip(UNSAFE_NAME)
    if dataset.casefold() in dropped_sources:
        raise Skip(DROPPED_SOURCE)
    scan = scan_sequence(sequence)
    selection = select(scan)
    frame_paths = sequence_frame_paths(burst_root / "frames" / split / dataset / seq_name, sequence)
    name = video_name(split, sequence)
    record, instances = write_video(tree, name, split, sequence, frame_paths, selection, scan.track_categories, categories)
    summary.kept += 1
    summary.instances_in_chosen_frames += instances
    category = record["category"] or str(selection.category_id)
    summary.class_histogram[category] = summary.class_histogram.get(category, 0) + 1
    return Kept(name, record)
