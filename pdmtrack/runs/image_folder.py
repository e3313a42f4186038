"""The ``segment`` and ``retrieve`` commands' work: read the user's images, run the library,
write the outputs (every file atomically). The CLI only parses and calls these.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from pdmtrack.config import GlobalConfig, SamConfig, TrackSettings, check_finite
from pdmtrack.device import resolve_device
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.features.extractor import distinct_names
from pdmtrack.features.types import FeatureSource
from pdmtrack.io.files import atomic_path, atomic_write_text, ensure_writable_folder
from pdmtrack.io.images import list_images, output_stems, read_rgb
from pdmtrack.io.masks import fit_mask_to_frame, read_mask
from pdmtrack.io.writers import blend_labels, write_palette_png
from pdmtrack.personal.contact_sheet import contact_sheet
from pdmtrack.personal.global_descriptor import GlobalDescriptor
from pdmtrack.personal.index import GalleryIndex, descriptor_config, is_index
from pdmtrack.personal.search import (
    Query,
    check_rerank,
    embed_gallery,
    gallery_features,
    global_ranking,
    instance_crop,
    pdm_scores,
    query_scorer,
    rerank_head,
)
from pdmtrack.personal.segmenter import ImageSegmenter
from pdmtrack.runs.record import OUTPUTS_LIST, check_replaceable, whole_folder
from pdmtrack.tracking.tracker import Tracker

DEFAULT_INDEX_RERANK = 100
INDEX_LISTED = 1000  # first-stage results an index gallery's ranking.csv lists (at least)


@dataclass
class RunSummary:
    """What a run did, for the CLI's last line."""

    images: int
    seconds: float
    out_dir: Path
    cache_hits: int = 0
    cache_misses: int = 0
    notes: list[str] = field(default_factory=list)


def _reference_labels(image: np.ndarray, mask: Path | None, resize_mask: bool, notes: list[str], role: str) -> np.ndarray | None:
    """The labels of ``mask`` fitted to ``image`` (None without a mask); ``role`` names the
    image in messages ("reference", "query")."""
    if mask is None:
        return None
    loaded = fit_mask_to_frame(read_mask(mask), mask, *image.shape[:2], resize=resize_mask, frames=f"the {role} image is")
    if loaded.note:
        notes.append(loaded.note)
    return loaded.labels


def segment_to_folder(
    reference: str | Path,
    targets: Sequence[str | Path],
    out_dir: str | Path,
    *,
    mask: str | Path | None,
    classes: Sequence[str],
    settings: TrackSettings,
    presence_threshold: float | None,
    overlay: bool = True,
    resize_mask: bool = False,
) -> RunSummary:
    """Segment the reference's instances in every target; write ``<stem>.png`` (palette),
    ``<stem>_overlay.jpg`` and ``scores.json`` into ``out_dir``."""
    if presence_threshold is not None:
        check_finite("presence_threshold", presence_threshold)
    if mask is None and not classes:
        raise InputError("pdmtrack segment", "give --mask REF_MASK, or --cls NAME")
    out_dir = ensure_writable_folder(out_dir, [reference, *targets, *([mask] if mask else [])], keep=False)
    check_replaceable(out_dir, OUTPUTS_LIST)
    images = list_images(targets, "target images")
    stems = output_stems(images)
    start = time.perf_counter()
    notes: list[str] = []
    names = distinct_names(classes)
    ref_image = read_rgb(reference)
    labels = _reference_labels(ref_image, mask, resize_mask, notes, "reference")
    tracker = Tracker(settings)
    source = tracker.feature_source(names, task="image")
    object_count = len(names) if labels is None else len([k for k in np.unique(labels) if k])
    if names and len(classes) not in (1, object_count):
        raise ParameterError("classes", f"give one class name, or one per object ({object_count})")
    rows = [names.index(c.strip()) for c in classes] if names else [None]
    segmenter = ImageSegmenter(source, ref_image, labels, rows, settings.match, tracker.device, tracker.refiner, presence_threshold)
    records = []
    with whole_folder(out_dir) as staging:
        for path, stem in zip(images, stems):
            image = read_rgb(path)
            result = segmenter(image)
            write_palette_png(staging / f"{stem}.png", result.labels)
            if overlay:
                _write_jpeg(staging / f"{stem}_overlay.jpg", blend_labels(image, result.labels))
            records.append({"image": str(path), "mask": f"{stem}.png", "objects": [asdict(o) for o in result.objects]})
        payload = {
            "reference": str(reference),
            "reference_mask": None if mask is None else str(mask),
            "classes": list(classes),
            "features": settings.source.kind,
            "presence_threshold": presence_threshold,
            "targets": records,
        }
        atomic_write_text(staging / "scores.json", json.dumps(payload, indent=1) + "\n")
    return _summary(len(images), start, out_dir, source, notes)


def _summary(count: int, start: float, out_dir: Path, source: FeatureSource | None, notes: list[str]) -> RunSummary:
    hits, misses = (getattr(source, "hits", 0), getattr(source, "misses", 0))
    return RunSummary(count, time.perf_counter() - start, out_dir, hits, misses, notes)


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, quality=90)


def retrieve_to_folder(
    query_image: str | Path,
    gallery: str | Path,
    out_dir: str | Path,
    *,
    mask: str | Path | None,
    classes: Sequence[str],
    settings: TrackSettings,
    rerank: int | None = None,
    global_config: GlobalConfig | None = None,
    top: int = 8,
    resize_mask: bool = False,
) -> RunSummary:
    """Rank the gallery (a folder of images, or an index folder) for the query instance;
    write ``ranking.csv`` (rank, image, score, stage) and ``contact_sheet.png`` (the query and
    the ``top`` best with their PDM maps) into ``out_dir``.

    A folder gallery is ranked by PDM, or with ``rerank`` N by ``global_config``'s
    descriptor and PDM over its N best (0: the descriptor alone). An index gallery is always
    ranked by its own descriptor first; PDM re-ranks its ``rerank`` best (default 100), and
    the ranking lists the first max(rerank, top, 1000) images of the first stage.
    """
    if mask is None and not classes:
        raise InputError("pdmtrack retrieve", "give --mask MASK, or --cls NAME")
    check_rerank(rerank)
    out_dir = ensure_writable_folder(out_dir, [query_image, gallery, *([mask] if mask else [])], keep=False)
    check_replaceable(out_dir, OUTPUTS_LIST)
    start = time.perf_counter()
    notes: list[str] = []
    names = distinct_names(classes)
    if len(names) > 1:
        raise ParameterError("classes", "a retrieval query is one instance: give one class name")
    image = read_rgb(query_image)
    labels = _reference_labels(image, mask, resize_mask, notes, "query")
    query = Query(image, None if labels is None else labels > 0, 0 if names else None)
    device = resolve_device(settings.runtime.device)
    paths, rerank, first = _first_stage(gallery, query, rerank, global_config, settings, top)
    source = Tracker(replace(settings, sam=SamConfig(model_type="none"))).feature_source(names, task="image") if rerank != 0 else None
    scorer = query_scorer(source, query, settings.match, device) if source is not None else None
    if first is None:
        scores = pdm_scores(source, [scorer], paths, device)[0]  # type: ignore[arg-type, list-item]
        order = np.argsort(-scores, kind="stable")
        ranked = [(int(i), float(scores[i]), "pdm") for i in order]
    elif rerank:
        order, head_scores = rerank_head(first[0], rerank, source, scorer, paths, device)  # type: ignore[arg-type]
        ranked = [(int(i), float(s), "pdm") for i, s in zip(order, head_scores)]
        ranked += [(int(i), float(s), "global") for i, s in zip(first[0][rerank:], first[1][rerank:])]
    else:
        ranked = [(int(i), float(s), "global") for i, s in zip(*first)]
    tiles = []
    for i, score, stage in ranked[:top]:
        heat = None
        if stage == "pdm":  # features from the cache: the map under the gallery's normalisation
            heat = scorer.maps(gallery_features(source, paths[i], device))[0]  # type: ignore[union-attr, arg-type]
        tiles.append((read_rgb(paths[i]), f"{len(tiles) + 1}: {score:.3f}", heat))
    sheet = contact_sheet(image, query.mask, tiles)
    with whole_folder(out_dir) as staging:
        _write_ranking(staging / "ranking.csv", [(paths[i], score, stage) for i, score, stage in ranked])
        with atomic_path(staging / "contact_sheet.png") as tmp:
            sheet.save(tmp)
    return _summary(len(paths), start, out_dir, source, notes)


def _first_stage(
    gallery: Path, query: Query, rerank: int | None, config: GlobalConfig | None, settings: TrackSettings, top: int
) -> tuple[list[Path], int | None, tuple[np.ndarray, np.ndarray] | None]:
    """(gallery paths, rerank, first-stage (order, scores) or None for PDM over everything).

    An index ranks with its own descriptor (re-ranking 100 unless told) and lists its first
    max(rerank, top, 1000); a folder has a first stage only with ``rerank``."""
    runtime = settings.runtime
    if is_index(gallery):
        index = GalleryIndex.load(gallery)
        descriptor = GlobalDescriptor(descriptor_config(index.descriptor), runtime.device, runtime.dtype)
        rerank = DEFAULT_INDEX_RERANK if rerank is None else rerank
        similarity, rows = index.search(descriptor(instance_crop(query)), max(rerank, top, INDEX_LISTED))
        found = rows[0] >= 0  # FAISS pads with -1 when it finds fewer than asked
        return [Path(p) for p in index.paths], rerank, (rows[0][found], similarity[0][found])
    paths = list_images([gallery], "gallery images")
    if rerank is None:
        return paths, None, None
    descriptor = GlobalDescriptor(config or GlobalConfig(), runtime.device, runtime.dtype)
    return paths, rerank, global_ranking(embed_gallery(descriptor, paths), descriptor, query)


def _write_ranking(path: Path, rows: list[tuple[Path, float, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "image", "score", "stage"])
    for rank, (image, score, stage) in enumerate(rows, start=1):
        writer.writerow([rank, str(image), f"{score:.6f}", stage])
    atomic_write_text(path, buffer.getvalue())
