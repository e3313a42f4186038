"""DAVIS 2017 evaluation runner: track every sequence with a :class:`~pdmtrack.Tracker`
(resumable, refusing to mix settings), then score the results (``davis_scoring``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.eval.davis_dataset import VOID_ID, DavisDataset
from pdmtrack.eval.davis_scoring import DavisReport, TrackingRecord, evaluate_results
from pdmtrack.eval.report import json_ready, write_json
from pdmtrack.fsutil import ensure_writable_folder, read_json
from pdmtrack.run import TrackSummary, plan_run, track_to_folder
from pdmtrack.tracker import Tracker
from pdmtrack.writers import write_palette_png


def load_class_map(path: Path | None) -> dict[str, str]:
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


def _same_settings_as_before(record: Path, settings: TrackSettings, class_map: dict[str, str]) -> None:
    """Resume only what was tracked the same way: the settings that shape results (all but
    the runtime ones) and the class map are recorded beside the results on the first run; a
    later run with others is refused instead of mixing results of two configurations."""
    shaping = {k: v for k, v in settings.to_dict().items() if k != "runtime"}
    current = json.loads(json.dumps(json_ready({**shaping, "class_map": class_map})))
    if record.is_file():
        previous = read_json(record)
        if not isinstance(previous, dict):
            raise InputError(record, "not a tracking-settings record (a JSON object); remove it or use a new -o")
        if previous != current:
            changed = sorted(key for key in current if previous.get(key) != current[key])
            problem = f"results here were tracked with other settings ({', '.join(changed)}); use a new -o or remove it"
            raise InputError(record.parent, problem)
        return
    write_json(record, current)


class SequenceTracker:
    """Tracks one sequence into a folder (PNGs only: scoring needs nothing else) with one
    :class:`Tracker` for every sequence, loaded when the first sequence needs it."""

    def __init__(self, tracker: Tracker | None = None) -> None:
        self.tracker = tracker

    def __call__(
        self, *, video: Path, out_dir: Path, mask: Path, classes: list[str], settings: TrackSettings
    ) -> TrackSummary:
        plan = plan_run(
            video, out_dir, masks={0: mask}, classes=classes, overlay=False, backend=settings.runtime.backend,
            settings=settings,
        )  # fmt: skip
        if self.tracker is None:
            self.tracker = Tracker(settings)
        return track_to_folder(self.tracker, plan)


def track_sequences(
    dataset: DavisDataset,
    results_dir: Path,
    track_fn: Callable,
    settings: TrackSettings,
    class_map: dict[str, str],
) -> TrackingRecord:
    """Track every sequence from its first annotation into ``results_dir/<seq>``; skip finished ones
    (only when they were tracked with the same settings, see :func:`_same_settings_as_before`)."""
    _same_settings_as_before(results_dir.parent / "tracking_settings.json", settings, class_map)
    tracked, skipped = [], []
    frames, seconds = 0, 0.0
    for sequence in tqdm(dataset.sequences, desc="track", unit="seq", disable=None):
        sequence_out = results_dir / sequence
        if _is_complete(dataset, sequence, sequence_out):
            skipped.append(sequence)
            continue
        class_name = class_map.get(sequence)
        result = track_fn(
            video=dataset.sequence_dir(sequence),
            out_dir=sequence_out,
            mask=_first_mask_without_void(dataset.annotation_paths(sequence)[0], results_dir.parent / "first_masks"),
            classes=[class_name] if class_name else [],
            settings=settings,
        )
        tracked.append(sequence)
        frames += int(result.frames)
        if result.fps:
            seconds += result.frames / result.fps
    return TrackingRecord(tracked=tracked, skipped=skipped, frames=frames, seconds=seconds)


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
    root: Path,
    split: str = "val",
    *,
    results_dir: Path | None = None,
    out_dir: Path | None = None,
    sequences: list[str] | None = None,
    class_map: Path | None = None,
    settings: TrackSettings | None = None,
    tracker: Tracker | None = None,
    track_fn: Callable | None = None,
) -> DavisReport:
    """Evaluate existing results (``results_dir``) or track every sequence into ``out_dir/results``.

    Writes ``global_results-<split>.csv``, ``per-sequence_results-<split>.csv`` and
    ``davis_report-<split>.json`` into ``out_dir`` (or ``results_dir`` when no ``out_dir``),
    prints both tables and returns the report. Sequences are tracked with ``tracker`` (one
    is loaded from ``settings`` when the first sequence needs it) unless ``track_fn`` replaces
    :class:`SequenceTracker`; sequences whose every frame already has a result PNG are not
    tracked again.
    """
    if results_dir is None and out_dir is None:
        raise InputError("--results/-o", "give a results folder to evaluate or an output folder to track into")
    dataset = DavisDataset(Path(root), split, sequences)
    if out_dir is not None:  # before any model loads
        ensure_writable_folder(out_dir)
    elif Path(results_dir).is_dir():
        ensure_writable_folder(results_dir)
    tracking = None
    if results_dir is None and out_dir is not None:
        settings = tracker.settings if tracker is not None else settings or TrackSettings()
        track_fn = track_fn if track_fn is not None else SequenceTracker(tracker)
        results_dir = Path(out_dir) / "results"
        tracking = track_sequences(dataset, results_dir, track_fn, settings, load_class_map(class_map))
    report = evaluate_results(dataset, Path(results_dir))
    report = replace(report, settings=settings.to_dict() if settings else None, tracking=tracking)
    report.write(Path(out_dir) if out_dir is not None else Path(results_dir))
    report.print_tables()
    return report
