"""``track_video``: the one call behind ``pdmtrack propagate`` and the evaluators.

reader -> feature cache (extractor on a miss) -> Propagator (memory, PDM priors, SAM) ->
writers. Inputs are validated before any model is loaded; every user mistake is an
``InputError``. Each stage's wall time is reported in ``TrackSummary.stage_seconds``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pdmtrack.config import TrackSettings
from pdmtrack.device import resolve_device
from pdmtrack.errors import InputError
from pdmtrack.build import check_feature_cache, feature_source, load_diffusion, load_refiner
from pdmtrack.features.cache import CachedFeatureSource
from pdmtrack.features.types import PDMFeatures
from pdmtrack.masks import fit_mask_to_frame, read_mask
from pdmtrack.matching import minmax, reference_mask_from_attention
from pdmtrack.propagate import Propagator
from pdmtrack.sam.refine import SamRefiner, resolve_overlaps
from pdmtrack.video import FrameReader
from pdmtrack.writers import MaskPngWriter, OverlayWriter, RleJsonWriter, check_output_folder, write_palette_png

# setup: checks and model loading; matching: memory, PDM maps, fusion (and the class-name mask)
STAGES = ("setup", "decode", "features", "matching", "refinement", "writing")
FIRST_FRAME_MASK = "first_frame_mask.png"  # written when the mask comes from the class name


@dataclass
class TrackSummary:
    """What a run did: frames written, wall seconds, frames/s, outputs, time per stage."""

    frames: int
    seconds: float
    fps: float
    out_dir: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # messages for the user (mask mapping, ...)
    cached_frames: int = 0  # frames whose features came from the cache
    computed_frames: int = 0  # frames whose features the diffusion model computed


@dataclass
class _FirstFrame:
    """The tracked objects as frame ``start`` defines them."""

    labels: np.ndarray | None  # (H, W) uint8 object ids; None: derive from the class names
    object_ids: list[int]
    classes: list[str]  # class name per object ([] when none was given)
    notes: list[str]  # what the mask reader reports (e.g. how RGB colours became ids)


def track_video(
    video: Path,
    out_dir: Path,
    *,
    mask: Path | None,
    classes: list[str],
    settings: TrackSettings,
    overlay: bool = True,
    rle: bool = False,
    png: bool = True,
    start: int = 0,
    end: int | None = None,
    resize_mask: bool = False,
) -> TrackSummary:
    """Track the objects of ``mask`` (or, without one, of the class names) from frame
    ``start`` to ``end`` (exclusive) and write the outputs under ``out_dir``."""
    began = time.perf_counter()
    out_dir = check_output_folder(out_dir)
    if mask is None and not classes:
        raise InputError("--mask", "give a first-frame mask (--mask FILE), a class name (--cls NAME) or both")
    reader = FrameReader(video, settings.runtime.backend)
    end = _check_range(start, end, reader.num_frames)
    first = _first_frame(mask, classes, reader, resize_mask)
    outputs = _output_files(out_dir, reader.frame_names[start:end], png=png, overlay=overlay, rle=rle, mask=mask)
    _spare_inputs(outputs, out_dir, video, mask)
    source, propagator = _build(settings, first.classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = dict.fromkeys(STAGES, 0.0)
    stages["setup"] = time.perf_counter() - began
    written = 0
    with _outputs(out_dir, reader, first.object_ids, png=png, overlay=overlay, rle=rle) as write:
        batches = reader.batches(settings.runtime.batch_size, start, end)
        with tqdm(total=end - start, desc=f"tracking {Path(video).name}", unit="frame", disable=None) as bar:
            for indices, frames in _timed(batches, stages, "decode"):
                tick = time.perf_counter()
                features = source(frames)
                stages["features"] += time.perf_counter() - tick
                is_first = indices[0] == start
                results = list(_track_batch(propagator, first, frames, features, is_first, out_dir, stages))
                tick = time.perf_counter()
                for index, frame, labels in zip(indices, frames, results):
                    write(reader.frame_names[index], frame, labels)
                written += len(results)
                bar.update(len(results))
                stages["writing"] += time.perf_counter() - tick
    stages["matching"] += propagator.timings["matching"]
    stages["refinement"] += propagator.timings["refinement"]
    seconds = time.perf_counter() - began
    return TrackSummary(
        written, seconds, written / max(seconds, 1e-9), out_dir, stages, first.notes, source.hits, source.misses
    )


def _build(settings: TrackSettings, classes: list[str]) -> tuple[CachedFeatureSource, Propagator]:
    """The cache folder and SAM first (fail fast), then the diffusion model; a ready Propagator."""
    check_feature_cache(settings)
    refiner = load_refiner(settings)
    source = feature_source(load_diffusion(settings), settings, classes)
    device = resolve_device(settings.runtime.device)
    return source, Propagator(settings.memory, settings.match, device, refiner)


@contextlib.contextmanager
def _outputs(
    out_dir: Path, reader: FrameReader, object_ids: list[int], *, png: bool, overlay: bool, rle: bool
) -> Iterator[Callable[[str, np.ndarray, np.ndarray], None]]:
    """A ``write(frame name, frame, labels)`` feeding every requested output; closes them."""
    with contextlib.ExitStack() as stack:
        pngs = MaskPngWriter(out_dir) if png else None
        size = (reader.width, reader.height)
        video = stack.enter_context(OverlayWriter(out_dir / "overlay.mp4", reader.fps, *size)) if overlay else None
        rles = stack.enter_context(RleJsonWriter(out_dir / "masks.json", *size[::-1], object_ids)) if rle else None

        def write(name: str, frame: np.ndarray, labels: np.ndarray) -> None:
            if pngs is not None:
                pngs.write(name, labels)
            if video is not None:
                video.write(frame, labels)
            if rles is not None:
                rles.add(name, labels)

        yield write


def _output_files(
    out_dir: Path, frame_names: list[str], *, png: bool, overlay: bool, rle: bool, mask: Path | None
) -> list[Path]:
    """Every file a run writes into ``out_dir``."""
    files = [out_dir / f"{name}.png" for name in frame_names] if png else []
    files += [out_dir / name for name, wanted in (("overlay.mp4", overlay), ("masks.json", rle)) if wanted]
    return files + ([out_dir / FIRST_FRAME_MASK] if mask is None else [])


def _spare_inputs(outputs: list[Path], out_dir: Path, video: Path, mask: Path | None) -> None:
    """Refuse an output folder where an output would overwrite an input (a frame, the mask)."""
    inputs = {Path(video).resolve(), *([Path(mask).resolve()] if mask else [])}
    if Path(video).is_dir():
        inputs |= {path.resolve() for path in Path(video).iterdir()}
    for output in outputs:
        if output.resolve() in inputs:
            raise InputError(out_dir, f"writing {output.name} there would overwrite an input; choose another -o")


def _check_range(start: int, end: int | None, num_frames: int) -> int:
    """The exclusive end frame, after checking ``start``/``end`` against the video."""
    if not 0 <= start < num_frames:
        raise InputError("--start", f"{start} is outside the video's frames 0..{num_frames - 1}")
    if end is None:
        return num_frames
    if not start < end <= num_frames:
        raise InputError("--end", f"{end} must lie after --start {start} and at most {num_frames} (the frame count)")
    return end


def _first_frame(
    mask: Path | None, classes: list[str], reader: FrameReader, resize_mask: bool
) -> _FirstFrame:
    """Read and fit the mask (or plan one object per class name) and pair objects with classes."""
    if mask is None:
        distinct = list(dict.fromkeys(classes))
        return _FirstFrame(None, list(range(1, len(distinct) + 1)), distinct, [])
    fitted = fit_mask_to_frame(read_mask(mask), mask, reader.height, reader.width, resize_mask)
    object_ids = [int(i) for i in fitted.object_ids]
    if len(classes) not in (0, 1, len(object_ids)):
        raise InputError(
            "--cls",
            f"{len(classes)} class names for {len(object_ids)} objects in {mask}: "
            "give one name for all objects or one per object (in id order)",
        )
    per_object = classes * len(object_ids) if len(classes) == 1 else list(classes)
    return _FirstFrame(fitted.labels, object_ids, per_object, [fitted.note] if fitted.note else [])


def _track_batch(
    propagator: Propagator,
    first: _FirstFrame,
    frames: np.ndarray,
    features: PDMFeatures,
    is_first: bool,
    out_dir: Path,
    stages: dict[str, float],
) -> Iterator[np.ndarray]:
    """Labels of every frame of the batch; the first batch starts the propagator."""
    if not is_first:
        yield from propagator.run(frames, features)
        return
    first_features = features.select(0)
    labels = first.labels
    if labels is None:
        labels = mask_from_class_names(frames[0], first_features, propagator, stages)
        tick = time.perf_counter()
        write_palette_png(out_dir / FIRST_FRAME_MASK, labels)
        stages["writing"] += time.perf_counter() - tick
    class_indices = _class_indices(first, features)
    propagator.start(first_features, labels, first.object_ids, class_indices)
    yield labels
    if len(frames) > 1:
        yield from propagator.run(frames[1:], features.select(slice(1, None)))


def _class_indices(first: _FirstFrame, features: PDMFeatures) -> list[int | None]:
    """Per object, the row of its class in the features' class vectors (None: no class)."""
    if not first.classes or features.class_vectors is None:
        return [None] * len(first.object_ids)
    order = list(dict.fromkeys(name.strip() for name in first.classes))
    return [order.index(name.strip()) for name in first.classes]


def mask_from_class_names(
    frame: np.ndarray, features: PDMFeatures, propagator: Propagator, stages: dict[str, float]
) -> np.ndarray:
    """First-frame labels from the class names alone (paper Eq. 3-4): each class's
    cross-attention map, upsampled to the frame, min-max normalised and thresholded at tau;
    a pixel claimed by several classes goes to the strongest; SAM refines when enabled.
    Object k+1 is the k-th distinct class name."""
    if features.class_attention is None:
        raise InputError("--cls", "the features carry no class attention (was a class name given?)")
    tick = time.perf_counter()
    height, width = frame.shape[:2]
    attention = features.class_attention[0].to(propagator.device, torch.float32)
    upsampled = F.interpolate(attention[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    tau = propagator.match_config.tau
    masks = reference_mask_from_attention(upsampled, tau)
    scores = minmax(upsampled)
    if not bool(masks.any()):
        raise InputError("--cls", "the class name's attention is flat on the first frame; give --mask FILE")
    stages["matching"] += time.perf_counter() - tick
    refiner: SamRefiner | None = propagator.refiner
    if refiner is None:
        return resolve_overlaps(masks, scores).to(torch.uint8).cpu().numpy()
    tick = time.perf_counter()
    background = torch.full_like(scores[:1], tau)  # class k wins where its map passes tau
    classes = refiner.refine(frame, torch.cat([background, scores]))
    stages["refinement"] += time.perf_counter() - tick
    return classes.to(torch.uint8).cpu().numpy()


def _timed(iterator: Iterator, stages: dict[str, float], stage: str) -> Iterator:
    """Yield from ``iterator``, adding the time spent waiting for each item to ``stage``."""
    while True:
        tick = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        finally:
            stages[stage] += time.perf_counter() - tick
        yield item
