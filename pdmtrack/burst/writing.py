"""Writing the PerMIR/PerMIS tree: frames, RLE masks, PerMIS-video, split lists."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pdmtrack.burst.reading import decode
from pdmtrack.burst.records import PERMIS_VIDEO_CLASSES, PERMIS_VIDEO_DIR, PERMIS_VIDEO_SPLIT, Selection
from pdmtrack.io.files import atomic_path, atomic_write_bytes, atomic_write_text
from pdmtrack.io.masks import encode_rle
from pdmtrack.io.writers import write_palette_png


def write_json(path: Path, payload: object) -> None:
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
class Kept:
    """One kept video as the manifest and the split lists record it."""

    name: str
    record: dict


def write_video(
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
            mask = decode(sequence, entry)
            if not mask.any():
                continue
            category_id = track_categories.get(int(tid))
            objects[str(int(tid))] = {"category_id": category_id, "category": categories.get(category_id), "rle": encode_rle(mask)}
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
    write_json(video_dir / "masks.json", masks)
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


def _write_permis_video(root: Path, name: str, sequence: dict, frame_paths: list[Path], selection: Selection) -> None:
    """JPEGImages/480p/<name>/ and Annotations/480p/<name>/ (the chosen track as id 1) from the
    track's first appearance to the last annotated frame; frames renamed 00000, 00001, ..."""
    track = str(selection.track_id)
    for out_index, frame_index in enumerate(range(selection.first_appearance, len(frame_paths))):
        stem = f"{out_index:05d}"
        _write_jpeg(frame_paths[frame_index], root / "JPEGImages" / "480p" / name / f"{stem}.jpg")
        entry = sequence["segmentations"][frame_index].get(track)
        labels = np.zeros((sequence["height"], sequence["width"]), dtype=np.uint8)
        if entry is not None:
            labels[decode(sequence, entry)] = 1
        write_palette_png(root / "Annotations" / "480p" / name / f"{stem}.png", labels)


def write_lists(tree: Path, kept: list[Kept]) -> None:
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
    write_json(tree / "permir.json", {"queries": queries, "gallery": gallery})
    write_json(tree / "permis_image.json", {"pairs": pairs})
    video_root = tree / PERMIS_VIDEO_DIR
    split_file = video_root / "ImageSets" / "2017" / f"{PERMIS_VIDEO_SPLIT}.txt"
    atomic_write_text(split_file, "".join(f"{video.name}\n" for video in kept))
    write_json(video_root / PERMIS_VIDEO_CLASSES, {v.name: v.record["category"] for v in kept})


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
