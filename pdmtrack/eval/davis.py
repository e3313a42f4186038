"""DAVIS 2017 evaluation runner: track every sequence with a :class:`~pdmtrack.Tracker`
(resumable, refusing to mix settings), then score the results (``davis_scoring``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.eval.davis_dataset import VOID_ID, DavisDataset
from pdmtrack.eval.davis_scoring import DavisReport, TrackingRecord, evaluate_results
from pdmtrack.io.files import ensure_writable_folder, read_json
from pdmtrack.io.writers import write_palette_png
from pdmtrack.runs.jobs import VideoJob
from pdmtrack.runs.pool import resolve_workers, run_jobs
from pdmtrack.runs.record import same_settings_as_before
from pdmtrack.tracking.tracker import Tracker


def load_class_map(path: str | Path | None) -> dict[str, str]:
    """A JSON object {"<sequence>": "<class name>"} (empty when ``path`` is None)."""
    if path is None:
        return {}
    path = Path(path)
    mapping = read_json(path, "class map not found")
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise InputError(path, 'expected a JSON object {"<sequence>": "<class name>"}')
    return mapping


def _is_complete(dataset: DavisDataset, sequence: str, sequence_out: Path) -> bool:
    return all((sequence_out / f"{name}.png").is_file() for name in dataset.frame_names(sequence))


def track_sequences(
    dataset: DavisDataset,
    results_dir: Path,
    track_fn: Callable | None,
    settings: TrackSettings,
    class_map: dict[str, str],
    *,
    tracker: Tracker | None = None,
    workers: int | str = 1,
    ray_address: str | None = None,
) -> TrackingRecord:
    """Track every sequence from its first annotation into ``results_dir/<seq>``; skip finished ones
    (only when they were tracked with the same settings, see :func:`same_settings_as_before`).

    Without ``track_fn``, sequences are jobs of :func:`pdmtrack.runs.pool.run_jobs` (``workers``,
    ``ray_address``; ``tracker`` serves one worker in this process): each sequence's folder
    appears whole once tracked. A ``track_fn`` (keyword arguments video, out_dir, mask,
    classes, settings; returns frames and fps) tracks here, one sequence after another."""
    same_settings_as_before(results_dir.parent / "tracking_settings.json", settings, {"class_map": class_map})
    todo = [s for s in dataset.sequences if not _is_complete(dataset, s, results_dir / s)]
    skipped = [s for s in dataset.sequences if s not in todo]
    inputs = {
        sequence: {
            "video": dataset.sequence_dir(sequence),
            "out_dir": results_dir / sequence,
            "mask": _first_mask_without_void(dataset.annotation_paths(sequence)[0], results_dir.parent / "first_masks"),
            "classes": [class_map[sequence]] if class_map.get(sequence) else [],
        }
        for sequence in todo
    }
    frames, seconds = 0, 0.0
    if track_fn is not None:
        for sequence in tqdm(todo, desc="track", unit="seq", disable=None):
            result = track_fn(**inputs[sequence], settings=settings)
            frames += int(result.frames)
            seconds += result.frames / result.fps if result.fps else 0.0
        return TrackingRecord(tracked=todo, skipped=skipped, frames=frames, seconds=seconds)
    jobs = [
        VideoJob(sequence, item["video"], item["out_dir"], {0: item["mask"]}, tuple(item["classes"]), len(dataset.frame_names(sequence)))
        for sequence, item in inputs.items()
    ]
    results = run_jobs(jobs, settings, workers=workers, ray_address=ray_address, tracker=tracker, desc="track")
    failed = [result for result in results if result.status != "done"]
    if failed:
        raise InputError(failed[0].name, f"tracking failed: {failed[0].reason}")
    frames = sum(result.frames for result in results)
    return TrackingRecord(tracked=todo, skipped=skipped, frames=frames, seconds=sum(r.seconds for r in results))


def _first_mask_without_void(annotation: Path, work_dir: Path) -> Path:
    """The first annotation as the tracker's mask: void pixels (255) are not an object, so an
    annotation with void gets a copy with void set to background in ``work_dir``."""
    with Image.open(annotation) as image:
        labels = np.asarray(image)
    if not (labels == VOID_ID).any():
        return annotation
    cleaned = work_dir / f"{annotation.parent.name}.png"
    write_palette_png(cleaned, np.where(labels == VOID_ID, 0, labels).astype(np.uint8))
    return cleaned


def evaluate_davis(
    root: str | Path,
    split: str = "val",
    *,
    results_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    sequences: list[str] | None = None,
    class_map: str | Path | None = None,
    settings: TrackSettings | None = None,
    tracker: Tracker | None = None,
    track_fn: Callable | None = None,
    workers: int | str = 1,
    ray_address: str | None = None,
) -> DavisReport:
    """Evaluate existing results (``results_dir``) or track every sequence into ``out_dir/results``.

    Writes ``global_results-<split>.csv``, ``per-sequence_results-<split>.csv`` and
    ``davis_report-<split>.json`` into ``out_dir`` (or ``results_dir`` when no ``out_dir``),
    prints both tables and returns the report. Sequences are tracked with ``tracker`` (one
    is loaded from ``settings`` when the first sequence needs it), or by ``workers`` Ray
    workers (``ray_address`` joins a cluster), unless ``track_fn`` replaces them (see
    :func:`track_sequences`); sequences whose every frame already has a result PNG are not
    tracked again.
    """
    if results_dir is None and out_dir is None:
        raise ParameterError("results_dir", "give a results folder to evaluate or an output folder (out_dir) to track into")
    dataset = DavisDataset(Path(root), split, sequences)
    if out_dir is not None:  # before any model loads
        ensure_writable_folder(out_dir)
    elif Path(results_dir).is_dir():
        ensure_writable_folder(results_dir)
    tracking = None
    if results_dir is None and out_dir is not None:
        settings = tracker.settings if tracker is not None else settings or TrackSettings()
        workers = resolve_workers(workers, ray_address)
        results_dir = Path(out_dir) / "results"
        tracking = track_sequences(
            dataset, results_dir, track_fn, settings, load_class_map(class_map),
            tracker=tracker, workers=workers, ray_address=ray_address,
        )  # fmt: skip
    report = evaluate_results(dataset, Path(results_dir))
    report = replace(report, settings=settings.to_dict() if settings else None, tracking=tracking)
    report.write(Path(out_dir) if out_dir is not None else Path(results_dir))
    report.print_tables()
    return report
