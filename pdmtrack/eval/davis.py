"""DAVIS 2017 semi-supervised evaluation: dataset reader, results scoring, and the runner.

Scoring follows davis2017-evaluation exactly: objects are ids 1..max(first annotation), the
first and last frames are not scored, a result frame is read as ``png == object_id``, and
J&F-Mean is the mean of the object-averaged J-Mean and F-Mean. Two deliberate extensions:
a missing result frame or object counts as empty (upstream exits), and a result id above the
number of objects is an :class:`InputError` naming the sequence and frame.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.eval.metrics import db_eval_boundary, db_eval_iou, db_statistics
from pdmtrack.eval.report import Table, json_ready, print_tables, write_csv, write_json

VOID_ID = 255  # DAVIS annotations mark void pixels with 255; upstream scores them as background
FRAMES_PER_CHUNK = 16  # frames scored together; bounds memory for long sequences
GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
PER_SEQUENCE_COLUMNS = ["Sequence", "J-Mean", "F-Mean"]


def _read_indexed_png(path: Path) -> np.ndarray:
    """Pixel values of a single-channel PNG (palette indices for mode P)."""
    try:
        with Image.open(path) as image:
            values = np.array(image)
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(path, f"cannot read the PNG ({err})") from err
    if values.ndim != 2:
        raise InputError(path, f"expected an indexed (palette) or grey PNG, got a {values.shape[-1]}-channel image")
    return values


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(path, f"cannot read the image ({err})") from err
    return height, width


class DavisDataset:
    """A DAVIS 2017 folder (JPEGImages/, Annotations/, ImageSets/2017/<split>.txt), validated."""

    def __init__(
        self, root: Path, split: str = "val", sequences: list[str] | None = None, resolution: str = "480p"
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.resolution = resolution
        if not self.root.is_dir():
            raise InputError(self.root, "DAVIS root folder not found")
        split_file = self.root / "ImageSets" / "2017" / f"{split}.txt"
        if not split_file.is_file():
            raise InputError(split_file, f"sequence list of the '{split}' split not found (DAVIS 2017 layout)")
        listed = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not listed:
            raise InputError(split_file, "lists no sequences")
        if sequences is None:
            chosen = listed
        else:
            unknown = [name for name in sequences if name not in listed]
            if unknown:
                raise InputError(split_file, f"unknown sequence(s) {', '.join(unknown)} (not in the '{split}' split)")
            chosen = list(dict.fromkeys(sequences))
        self.sequences: list[str] = chosen
        self._frames: dict[str, list[Path]] = {}
        self._annotations: dict[str, list[Path]] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        for name in chosen:
            self._index(name)

    def _index(self, sequence: str) -> None:
        frame_dir = self.sequence_dir(sequence)
        annotation_dir = self.root / "Annotations" / self.resolution / sequence
        frames = sorted(frame_dir.glob("*.jpg"))
        if not frames:
            raise InputError(frame_dir, f"no .jpg frames for sequence {sequence}")
        annotations = sorted(annotation_dir.glob("*.png"))
        if len(annotations) != len(frames):
            raise InputError(annotation_dir, f"{len(annotations)} annotation PNGs for {len(frames)} frames")
        for frame, annotation in zip(frames, annotations):
            if frame.stem != annotation.stem:
                raise InputError(annotation, f"does not match frame {frame.name} (names must pair up)")
        size = image_size(frames[0])
        for path in [*frames, *annotations]:
            height, width = image_size(path)
            if (height, width) != size:
                raise InputError(path, f"size {width}x{height} differs from the first frame's {size[1]}x{size[0]}")
        self._frames[sequence] = frames
        self._annotations[sequence] = annotations
        self._sizes[sequence] = size

    def sequence_dir(self, sequence: str) -> Path:
        """The folder of the sequence's JPEG frames."""
        return self.root / "JPEGImages" / self.resolution / sequence

    def frame_paths(self, sequence: str) -> list[Path]:
        """The sequence's JPEG frames, sorted by name."""
        return list(self._frames[sequence])

    def annotation_paths(self, sequence: str) -> list[Path]:
        """The sequence's annotation PNGs, one per frame, sorted by name."""
        return list(self._annotations[sequence])

    def frame_names(self, sequence: str) -> list[str]:
        """Frame names without extension ('00000', ...): result PNGs are named after them."""
        return [path.stem for path in self._frames[sequence]]

    def image_size(self, sequence: str) -> tuple[int, int]:
        """(height, width) of the sequence's frames."""
        return self._sizes[sequence]

    def load_annotations(self, sequence: str, indices: list[int] | None = None) -> np.ndarray:
        """Annotations as (T, H, W) uint8 object ids (all frames, or the given frame indices)."""
        paths = self._annotations[sequence]
        chosen = range(len(paths)) if indices is None else indices
        masks = np.empty((len(chosen), *self._sizes[sequence]), dtype=np.uint8)
        for slot, index in enumerate(chosen):
            masks[slot] = _read_indexed_png(paths[index])
        return masks


@dataclass(frozen=True)
class ObjectScores:
    """J and F statistics of one object (named ``<sequence>_<id>`` as upstream)."""

    name: str
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float


@dataclass(frozen=True)
class TrackingRecord:
    """What the tracking stage of :func:`evaluate_davis` did (mode 2)."""

    tracked: list[str]
    skipped: list[str]
    frames: int
    seconds: float

    @property
    def fps(self) -> float | None:
        """Frames per second over the sequences tracked in this run (None when none were)."""
        return self.frames / self.seconds if self.seconds > 0 else None


@dataclass(frozen=True)
class DavisReport:
    """Per-object scores of one DAVIS evaluation, plus how the results were produced."""

    split: str
    objects: list[ObjectScores]
    settings: dict | None = None
    tracking: TrackingRecord | None = None
    results_dir: Path | None = None

    def global_scores(self) -> dict[str, float]:
        """The seven global numbers, keyed by the official column names."""

        def average(attribute: str) -> float:
            values = [getattr(score, attribute) for score in self.objects]
            return float(np.mean(values)) if values else float("nan")

        j_mean, f_mean = average("j_mean"), average("f_mean")
        return {
            "J&F-Mean": (j_mean + f_mean) / 2.0,
            "J-Mean": j_mean,
            "J-Recall": average("j_recall"),
            "J-Decay": average("j_decay"),
            "F-Mean": f_mean,
            "F-Recall": average("f_recall"),
            "F-Decay": average("f_decay"),
        }

    def global_table(self) -> Table:
        """The official global table (one row)."""
        scores = self.global_scores()
        return Table(f"Global results for {self.split}", GLOBAL_COLUMNS, [[scores[name] for name in GLOBAL_COLUMNS]])

    def per_sequence_table(self) -> Table:
        """The official per-object table: Sequence (``<seq>_<id>``), J-Mean, F-Mean."""
        rows: list[list[str | float | int | None]] = [[obj.name, obj.j_mean, obj.f_mean] for obj in self.objects]
        return Table(f"Per sequence results for {self.split}", PER_SEQUENCE_COLUMNS, rows)

    def to_dict(self) -> dict:
        """Everything in the report as plain data (for the JSON record)."""
        tracking = None
        if self.tracking is not None:
            tracking = {
                "tracked": self.tracking.tracked,
                "skipped": self.tracking.skipped,
                "frames": self.tracking.frames,
                "seconds": self.tracking.seconds,
                "fps": self.tracking.fps,
            }
        return {
            "benchmark": "DAVIS 2017 semi-supervised",
            "split": self.split,
            "results_dir": self.results_dir,
            "global": self.global_scores(),
            "per_object": [asdict(obj) for obj in self.objects],
            "settings": self.settings,
            "tracking": tracking,
        }

    def write(self, out_dir: Path) -> list[Path]:
        """Write the two official CSVs and the JSON record into ``out_dir``; return their paths."""
        out_dir = Path(out_dir)
        return [
            write_csv(out_dir / f"global_results-{self.split}.csv", self.global_table()),
            write_csv(out_dir / f"per-sequence_results-{self.split}.csv", self.per_sequence_table()),
            write_json(out_dir / f"davis_report-{self.split}.json", self.to_dict()),
        ]

    def print_tables(self) -> None:
        """Print the global and the per-object tables."""
        print_tables([self.global_table(), self.per_sequence_table()])


def _read_result_frame(path: Path, shape: tuple[int, int], num_objects: int, sequence: str) -> np.ndarray:
    """Object ids of one result PNG; a missing file is an empty frame."""
    if not path.is_file():
        return np.zeros(shape, dtype=np.uint8)
    ids = _read_indexed_png(path)
    if ids.shape != shape:
        got, want = f"{ids.shape[1]}x{ids.shape[0]}", f"{shape[1]}x{shape[0]}"
        raise InputError(path, f"size {got} differs from the annotation's {want}")
    if ids.size and int(ids.max()) > num_objects:
        raise InputError(
            path,
            f"sequence {sequence} frame {path.stem}: object id {int(ids.max())} but the first annotation "
            f"has {num_objects} object(s)",
        )
    return ids


def evaluate_sequence(dataset: DavisDataset, sequence: str, sequence_results: Path) -> list[ObjectScores]:
    """J and F statistics of every object of one sequence against ``sequence_results/<frame>.png``."""
    names = dataset.frame_names(sequence)
    if len(names) < 3:
        raise InputError(dataset.sequence_dir(sequence), "needs at least 3 frames (the first and last are not scored)")
    first = dataset.load_annotations(sequence, [0])[0]
    num_objects = int(np.where(first == VOID_ID, 0, first).max())
    object_ids = np.arange(1, num_objects + 1)[:, None, None, None]
    shape = dataset.image_size(sequence)
    scored = list(range(1, len(names) - 1))
    j_per_frame = np.zeros((num_objects, len(scored)))
    f_per_frame = np.zeros((num_objects, len(scored)))
    for start in range(0, len(scored), FRAMES_PER_CHUNK):
        indices = scored[start : start + FRAMES_PER_CHUNK]
        truth = dataset.load_annotations(sequence, indices)  # void (255) matches no object id
        results = np.stack(
            [_read_result_frame(sequence_results / f"{names[i]}.png", shape, num_objects, sequence) for i in indices]
        )
        truth_objects = truth[None] == object_ids
        result_objects = results[None] == object_ids
        window = slice(start, start + len(indices))
        j_per_frame[:, window] = db_eval_iou(truth_objects, result_objects)
        f_per_frame[:, window] = db_eval_boundary(truth_objects, result_objects)
    scores = []
    for k in range(num_objects):
        j_stats, f_stats = db_statistics(j_per_frame[k]), db_statistics(f_per_frame[k])
        scores.append(ObjectScores(f"{sequence}_{k + 1}", *j_stats, *f_stats))
    return scores


def evaluate_results(dataset: DavisDataset, results_dir: Path) -> DavisReport:
    """Score ``results_dir/<seq>/<frame>.png`` for every sequence of ``dataset``."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError(results_dir, "results folder not found")
    missing = [name for name in dataset.sequences if not (results_dir / name).is_dir()]
    if missing:
        raise InputError(results_dir, f"no results folder for sequence(s) {', '.join(missing)}")
    objects: list[ObjectScores] = []
    for sequence in tqdm(dataset.sequences, desc="evaluate", unit="seq", disable=None):
        objects.extend(evaluate_sequence(dataset, sequence, results_dir / sequence))
    return DavisReport(split=dataset.split, objects=objects, results_dir=results_dir)


def load_class_map(path: Path | None) -> dict[str, str]:
    """A JSON object {"<sequence>": "<class name>"} (empty when ``path`` is None)."""
    if path is None:
        return {}
    path = Path(path)
    try:
        mapping = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InputError(path, "class map not found") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"not a readable JSON file ({err})") from err
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
        previous = json.loads(record.read_text())
        if previous != current:
            changed = sorted(key for key in current if previous.get(key) != current[key])
            problem = f"results here were tracked with other settings ({', '.join(changed)}); use a new -o or remove it"
            raise InputError(record.parent, problem)
        return
    write_json(record, current)


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
    from pdmtrack.writers import write_palette_png

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
    track_fn: Callable | None = None,
) -> DavisReport:
    """Evaluate existing results (``results_dir``) or track every sequence into ``out_dir/results``.

    Writes ``global_results-<split>.csv``, ``per-sequence_results-<split>.csv`` and
    ``davis_report-<split>.json`` into ``out_dir`` (or ``results_dir`` when no ``out_dir``),
    prints both tables and returns the report. ``track_fn`` defaults to
    :func:`pdmtrack.pipeline.track_video` (PNGs only, no overlay video); sequences whose
    every frame already has a result PNG are not tracked again.
    """
    if results_dir is None and out_dir is None:
        raise InputError("--results/-o", "give a results folder to evaluate or an output folder to track into")
    dataset = DavisDataset(Path(root), split, sequences)
    tracking = None
    if results_dir is None and out_dir is not None:
        if track_fn is None:
            from pdmtrack.pipeline import track_video

            track_fn = functools.partial(track_video, overlay=False)  # scoring needs the PNGs only
        settings = settings or TrackSettings()
        results_dir = Path(out_dir) / "results"
        tracking = track_sequences(dataset, results_dir, track_fn, settings, load_class_map(class_map))
    report = evaluate_results(dataset, Path(results_dir))
    report = replace(report, settings=settings.to_dict() if settings else None, tracking=tracking)
    report.write(Path(out_dir) if out_dir is not None else Path(results_dir))
    report.print_tables()
    return report
