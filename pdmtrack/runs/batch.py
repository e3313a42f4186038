"""``pdmtrack propagate-batch``: many videos, from a JOBS file or from two folders.

JOBS is a CSV file (header row) or a JSONL file (one JSON object per line) with the fields
``video``, ``mask`` (a file, or ``FRAME:FILE`` entries separated by ``;``), ``cls``
(optional, ``;``-separated) and ``out`` (the output folder relative to OUT; default: the
video's name). Relative paths are relative to the JOBS file's folder. Folder mode pairs each
video of ``--videos DIR`` (a video file or a folder of frames) with ``--masks DIR/<name>.png``
(or ``.json``, COCO RLE) for its first frame, or ``--masks DIR/<name>/`` holding masks named
after frames (``00000.png``, the DAVIS layout).

Every row is checked before any model loads: a row with a problem (a missing video, a bad
mask) is reported as failed and the others run. A finished video's folder holds a
finished run record (``run.json``); a re-run skips those (with the same settings only, as
``eval davis``). The summary (video, frames, frames/s, status) is printed and written to
``OUT/batch_summary.csv``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.io.files import ensure_writable_folder
from pdmtrack.io.reports import Table, render_table, write_csv
from pdmtrack.io.video import VIDEO_SUFFIXES, FrameReader
from pdmtrack.runs.jobs import VideoJob, VideoResult, finished_frames
from pdmtrack.runs.pool import resolve_workers, run_jobs
from pdmtrack.runs.record import check_replaceable, same_settings_as_before
from pdmtrack.runs.video_folder import mask_files, plan_video
from pdmtrack.tracking.models import check_feature_cache

JOB_FIELDS = ("video", "mask", "cls", "out")
SUMMARY_CSV = "batch_summary.csv"
SETTINGS_RECORD = "batch_settings.json"
_MASK_SUFFIXES = (".png", ".json")


@dataclass(frozen=True)
class JobRow:
    """One row of a JOBS file (paths as written) and where it came from."""

    where: str  # "jobs.csv:3"
    video: str
    mask: str = ""
    cls: str = ""
    out: str = ""


@dataclass
class BatchOutcome:
    """Per row (in order): its video as written, its output folder and its result."""

    videos: list[str]
    outs: list[str]
    results: list[VideoResult]
    summary_csv: Path

    @property
    def failed(self) -> list[VideoResult]:
        return [result for result in self.results if result.status == "failed"]

    def table(self) -> Table:
        """The console table: video, out, frames, frames/s, status (with the reason)."""
        rows = [
            [video, out, result.frames, round(result.fps, 2) if result.status == "done" else None,
             f"{result.status}: {result.reason}" if result.reason else result.status]
            for video, out, result in zip(self.videos, self.outs, self.results)
        ]  # fmt: skip
        return Table("propagate-batch", ["video", "out", "frames", "frames/s", "status"], rows)

    def csv_table(self) -> Table:
        """The summary CSV: the console's columns split into plain fields."""
        columns = ["video", "out", "status", "frames", "seconds", "frames_per_s", "attempts", "reason"]
        rows = [
            [video, out, r.status, r.frames, round(r.seconds, 3), round(r.fps, 3), r.attempts, r.reason]
            for video, out, r in zip(self.videos, self.outs, self.results)
        ]
        return Table("propagate-batch", columns, rows)

    def format(self) -> str:
        counts = {status: sum(r.status == status for r in self.results) for status in ("done", "skipped", "failed")}
        line = ", ".join(f"{count} {status}" for status, count in counts.items())
        return f"{render_table(self.table())}\n{len(self.results)} videos: {line}; summary in {self.summary_csv}"


def read_jobs(path: str | Path) -> list[JobRow]:
    """Rows of a CSV (header row) or JSONL JOBS file; InputError naming the line on a problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # Excel saves CSV with a byte-order mark
    except FileNotFoundError:
        raise InputError(path, "jobs file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read the jobs file ({err})") from err
    records = _jsonl_records(path, text) if path.suffix.lower() in (".jsonl", ".ndjson") else _csv_records(path, text)
    rows = []
    for where, record in records:
        unknown = sorted(set(record) - set(JOB_FIELDS))
        if unknown:
            raise InputError(where, f"unknown field(s) {', '.join(unknown)} (fields: {', '.join(JOB_FIELDS)})")
        values = {key: _field_text(where, key, record.get(key)) for key in JOB_FIELDS}
        if not values["video"]:
            raise InputError(where, "the 'video' field is empty")
        rows.append(JobRow(where, **values))
    if not rows:
        raise InputError(path, "no jobs in the file")
    return rows


def _csv_records(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "video" not in [name.strip() for name in reader.fieldnames]:
        raise InputError(path, f"a CSV jobs file needs a header row with the fields {', '.join(JOB_FIELDS)}")
    records = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if None in row:
            raise InputError(where, "more cells than header fields")
        records.append((where, {key.strip(): value for key, value in row.items() if key is not None}))
    return records


def _jsonl_records(path: Path, text: str) -> list[tuple[str, dict]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(where, f"not a JSON object ({err.msg})") from None
        if not isinstance(record, dict):
            raise InputError(where, "each line must be a JSON object")
        records.append((where, record))
    return records


def _field_text(where: str, key: str, value: object) -> str:
    """A field as text: lists (JSONL ``mask``/``cls``) join with ';'."""
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ";".join(value)
    if not isinstance(value, str):
        raise InputError(where, f"field '{key}' must be a string")
    return value.strip()


def folder_rows(videos_dir: str | Path, masks_dir: str | Path | None) -> list[JobRow]:
    """A row per video of ``videos_dir`` with its mask(s) from ``masks_dir`` (see the module
    doc; without ``masks_dir`` the rows give no mask and track the ``--cls`` names)."""
    for parameter, folder in (("videos_dir", videos_dir), ("masks_dir", masks_dir)):
        if folder is not None and not Path(folder).is_dir():
            raise ParameterError(parameter, f"{folder} is not a folder")
    videos = sorted(p for p in Path(videos_dir).iterdir() if not p.name.startswith(".") and _is_video(p))
    if not videos:
        raise InputError(videos_dir, "no videos (video files or folders of frames) in this folder")
    return [JobRow(str(video), str(video), _folder_masks(video, Path(masks_dir)) if masks_dir else "") for video in videos]


def _is_video(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES


def _folder_masks(video: Path, masks_dir: Path) -> str:
    """The mask spec of ``video``: ``NAME.png|.json`` (frame 0) or ``NAME/<frame>.png`` files
    (frames by name); '' when none is there (the row then fails unless --cls is given)."""
    name = video.stem if video.is_file() else video.name
    for suffix in _MASK_SUFFIXES:
        if (masks_dir / f"{name}{suffix}").is_file():
            return str(masks_dir / f"{name}{suffix}")
    folder = masks_dir / name
    if not folder.is_dir():
        return ""
    try:
        names = FrameReader(video).frame_names
    except InputError:
        return ""  # the row fails when planned, naming the video's problem
    index = {frame: position for position, frame in enumerate(names)}
    specs = [f"{index[mask.stem]}:{mask}" for mask in sorted(folder.glob("*.png")) if mask.stem in index]
    return ";".join(specs)


def plan_jobs(
    rows: Sequence[JobRow],
    out_root: str | Path,
    *,
    base: str | Path,
    default_classes: Sequence[str] = (),
    png: bool = True,
    overlay: bool = True,
    rle: bool = False,
    settings: TrackSettings | None = None,
) -> tuple[list[VideoJob | VideoResult], list[str]]:
    """Per row, a checked job (named by its output folder, relative to ``out_root``), or a
    failed result saying what is wrong with the row; and each row's output folder.
    Duplicate output folders are an InputError."""
    out_root, base = Path(out_root), Path(base)
    planned: list[VideoJob | VideoResult] = []
    outs: list[str] = []
    for row in rows:
        out = _out_name(row)
        if out in outs:
            raise InputError(row.where, f"output folder '{out}' is also another row's; give each row its own 'out'")
        outs.append(out)
        try:
            video = _resolve(base, row.video)
            masks = mask_files([_resolve(base, spec) for spec in _split(row.mask)], 0) if row.mask else {}
            classes = tuple(_split(row.cls)) or tuple(default_classes)
            if finished_frames(out_root / out) is None:  # a finished row is skipped, never replaced
                check_replaceable(out_root / out)
            plan = plan_video(
                video, out_root / out, masks=masks, classes=classes, png=png, overlay=overlay, rle=rle,
                backend=settings.runtime.backend if settings else "auto", settings=settings,
            )  # fmt: skip
        except InputError as err:
            planned.append(VideoResult(out, "failed", reason=str(err), attempts=0))
            continue
        planned.append(VideoJob(out, Path(video), out_root / out, masks, classes, plan.end - plan.start, png=png, overlay=overlay, rle=rle))
    return planned, outs


def _out_name(row: JobRow) -> str:
    """The row's output folder relative to OUT: its ``out``, else the video's name."""
    text = row.out or PurePath(row.video.rstrip("/\\")).stem
    path = PurePath(text)
    if path.is_absolute() or ".." in path.parts or not path.parts or text.startswith("."):
        raise InputError(row.where, f"'out' must be a folder inside OUT (relative, no '..'), got '{text}'")
    return path.as_posix()


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(";") if part.strip()]


def _resolve(base: Path, spec: str) -> str:
    """A path (or ``FRAME:PATH``) of a JOBS file, relative to the file's folder."""
    frame, sep, rest = spec.partition(":")
    if sep and frame.isdigit() and not (base / spec).exists():
        return f"{frame}:{base / Path(rest).expanduser()}"
    return str(base / Path(spec).expanduser())


def propagate_batch(
    rows: Sequence[JobRow],
    out_root: str | Path,
    settings: TrackSettings,
    *,
    base: str | Path,
    default_classes: Sequence[str] = (),
    png: bool = True,
    overlay: bool = True,
    rle: bool = False,
    workers: int | str = 1,
    ray_address: str | None = None,
    inputs: Sequence[str | Path] = (),
) -> BatchOutcome:
    """Track every row into ``out_root/<out>``; skip rows finished by an earlier run; write
    the summary CSV. Rows that fail are reported, the others finish. ``out_root`` must lie
    apart from ``inputs`` (the JOBS file, the video and mask folders) and be writable;
    refused rows create no folder."""
    out_root = ensure_writable_folder(out_root, inputs, keep=False)
    workers = resolve_workers(workers, ray_address)
    check_feature_cache(settings)
    planned, outs = plan_jobs(
        rows, out_root, base=base, default_classes=default_classes, png=png, overlay=overlay, rle=rle, settings=settings
    )
    outputs = {"png": png, "overlay": overlay, "rle": rle}
    same_settings_as_before(out_root / SETTINGS_RECORD, settings, {"outputs": outputs})
    todo = [item for item in planned if isinstance(item, VideoJob) and finished_frames(item.out_dir) is None]
    ran = {result.name: result for result in run_jobs(todo, settings, workers=workers, ray_address=ray_address)}
    results = []
    for item in planned:
        if isinstance(item, VideoResult):
            results.append(item)
        elif item.name in ran:
            results.append(ran[item.name])
        else:
            results.append(VideoResult(item.name, "skipped", finished_frames(item.out_dir) or 0, attempts=0))
    outcome = BatchOutcome([row.video for row in rows], outs, results, out_root / SUMMARY_CSV)
    write_csv(outcome.summary_csv, outcome.csv_table())
    return outcome


__all__ = ["BatchOutcome", "JobRow", "folder_rows", "plan_jobs", "propagate_batch", "read_jobs"]
