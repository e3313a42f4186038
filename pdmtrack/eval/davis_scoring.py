"""DAVIS 2017 semi-supervised scoring of a results folder, as davis2017-evaluation does it.

Objects are ids 1..max(first annotation), the first and last frames are not scored, a result
frame is read as ``png == object_id``, and J&F-Mean is the mean of the object-averaged J-Mean
and F-Mean. A missing result frame (of the scored ones) stops the evaluation, as upstream's
"frame not found" does, with an :class:`InputError` naming the file; an object missing from a
result counts as empty (as upstream); a result id above the number of objects is an
:class:`InputError` naming the sequence and frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pdmtrack.errors import InputError
from pdmtrack.eval.davis_dataset import VOID_ID, DavisDataset, read_indexed_png
from pdmtrack.eval.metrics import db_eval_boundary, db_eval_iou, db_statistics
from pdmtrack.io.reports import Table, print_tables, write_csv, write_json

FRAMES_PER_CHUNK = 16  # frames scored together; bounds memory for long sequences
GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
PER_SEQUENCE_COLUMNS = ["Sequence", "J-Mean", "F-Mean"]


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
    """Object ids of one result PNG (``check_result_frames`` has made sure it exists)."""
    ids = read_indexed_png(path)
    if ids.shape != shape:
        got, want = f"{ids.shape[1]}x{ids.shape[0]}", f"{shape[1]}x{shape[0]}"
        raise InputError(path, f"size {got} differs from the annotation's {want}")
    if ids.size and int(ids.max()) > num_objects:
        raise InputError(
            path, f"sequence {sequence} frame {path.stem}: object id {int(ids.max())} but the first annotation has {num_objects} object(s)"
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
        results = np.stack([_read_result_frame(sequence_results / f"{names[i]}.png", shape, num_objects, sequence) for i in indices])
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


def check_result_frames(dataset: DavisDataset, results_dir: Path) -> None:
    """InputError naming the first scored frame (all but each sequence's first and last) that has
    no result PNG: davis2017-evaluation stops with "frame not found" there too."""
    for sequence in dataset.sequences:
        for name in dataset.frame_names(sequence)[1:-1]:
            path = results_dir / sequence / f"{name}.png"
            if not path.is_file():
                raise InputError(
                    path,
                    f"result frame not found (sequence {sequence}, frame {name}); every frame but the first "
                    "and the last is scored, so each needs its <frame>.png",
                )


def evaluate_results(dataset: DavisDataset, results_dir: Path) -> DavisReport:
    """Score ``results_dir/<seq>/<frame>.png`` for every sequence of ``dataset``."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError(results_dir, "results folder not found")
    missing = [name for name in dataset.sequences if not (results_dir / name).is_dir()]
    if missing:
        raise InputError(results_dir, f"no results folder for sequence(s) {', '.join(missing)}")
    check_result_frames(dataset, results_dir)
    objects: list[ObjectScores] = []
    for sequence in tqdm(dataset.sequences, desc="evaluate", unit="seq", disable=None):
        objects.extend(evaluate_sequence(dataset, sequence, results_dir / sequence))
    return DavisReport(split=dataset.split, objects=objects, results_dir=results_dir)
