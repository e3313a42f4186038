"""Many videos at once: in this process (``workers=1``) or over Ray workers, each holding one
:class:`~pdmtrack.Tracker` (models loaded once per worker), videos as tasks, largest first.

A video is tracked into a hidden staging folder beside its output folder and renamed into
place when complete, so an output folder is never a mixture of two attempts, and a worker
killed mid-video leaves nothing under the final name (its video is retried, see
``ray_pool``). ``propagate-batch`` and the evaluators build :class:`VideoJob` lists and call
:func:`run_jobs`; results are the same whatever the number of workers.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.io.files import read_json, replace_folder
from pdmtrack.runs.record import RUN_RECORD
from pdmtrack.runs.video_folder import plan_run, track_to_folder
from pdmtrack.tracking.tracker import Tracker


@dataclass(frozen=True)
class VideoJob:
    """One video to track into ``out_dir`` (written whole, see the module doc)."""

    name: str  # unique among the jobs of a run; shown in progress and summaries
    video: Path
    out_dir: Path
    masks: dict[int, Path] = field(default_factory=dict)  # frame index -> mask file
    classes: tuple[str, ...] = ()
    frames: int = 0  # frames to track: the scheduler's size estimate (largest first)
    png: bool = True
    overlay: bool = False
    rle: bool = False

    def run(self, tracker: Tracker, on_frame: Callable[[], None] | None = None) -> VideoResult:
        """Track this video (see :func:`track_job`); every job of ``run_jobs`` has this method."""
        return track_job(tracker, self, on_frame)


@dataclass
class VideoResult:
    """What became of one job: ``done``, ``skipped`` (finished by an earlier run) or ``failed``."""

    name: str
    status: str
    frames: int = 0
    seconds: float = 0.0
    reason: str = ""  # why it failed (one line)
    attempts: int = 1
    details: dict = field(default_factory=dict)  # what a job reports besides (e.g. a feature fingerprint)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def parse_workers(text: str | int) -> int | str:
    """``--workers`` value: a positive integer or ``auto``."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        count = int(text)
    except ValueError:
        raise InputError("--workers", f"'{text}' is not a number of workers or 'auto'") from None
    if count < 1:
        raise InputError("--workers", f"must be at least 1, got {count}")
    return count


def finished_frames(out_dir: Path) -> int | None:
    """Frames written by the finished run whose record (``run_record``) is in ``out_dir``;
    None when no run finished there."""
    path = out_dir / RUN_RECORD
    record = read_json(path) if path.is_file() else None
    if not isinstance(record, dict) or not record.get("finished"):
        return None
    return int(record.get("frames_written") or 0)


def same_settings_as_before(record: Path, settings: TrackSettings, extra: dict) -> None:
    """Resume only what was made the same way: the settings that shape results (all but the
    runtime ones) and ``extra`` are recorded in ``record`` on the first run; a later run with
    others is refused instead of mixing results of two configurations."""
    from pdmtrack.io.reports import json_ready, write_json

    shaping = {k: v for k, v in settings.to_dict().items() if k != "runtime"}
    current = json.loads(json.dumps(json_ready({**shaping, **extra})))
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


def resolve_workers(workers: int | str, ray_address: str | None) -> int | str:
    """``auto`` on this machine: one per GPU, else one per ``default_threads()`` cores (so 1
    on a CPU-only machine); joining a cluster, ``auto`` is left for Ray to count. Checks now,
    before any work, that Ray is there when it will be needed."""
    if workers == "auto" and ray_address is None:
        gpus = visible_gpus()
        workers = gpus if gpus else max(1, cpu_count() // max(1, default_threads()))
    if workers != 1 or ray_address is not None:
        from pdmtrack.runs.ray_workers import import_ray

        import_ray()
    return workers


def track_job(tracker: Tracker, job: VideoJob, on_frame: Callable[[], None] | None = None) -> VideoResult:
    """Track ``job`` with ``tracker`` into a staging folder and rename it into place; every
    error becomes a failed result (one line), so a batch goes on."""
    began = time.perf_counter()
    staging = job.out_dir.parent / f".{job.out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        plan = plan_run(
            job.video, staging, masks=job.masks, classes=list(job.classes), png=job.png, overlay=job.overlay,
            rle=job.rle, backend=tracker.settings.runtime.backend, settings=tracker.settings,
        )  # fmt: skip
        summary = track_to_folder(tracker, plan, on_frame=on_frame)
        replace_folder(staging, job.out_dir)
        return VideoResult(job.name, "done", summary.frames, time.perf_counter() - began)
    except Exception as err:  # noqa: BLE001 - one video's failure is reported, the batch goes on
        return VideoResult(job.name, "failed", seconds=time.perf_counter() - began, reason=one_line(err))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def one_line(err: BaseException) -> str:
    """An error as one short line (InputErrors are already one line)."""
    text = str(err) if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first if len(first) <= 300 else first[:297] + "..."


class Job(Protocol):
    """What ``run_jobs`` runs: a name (unique in a run), a size in frames, and ``run``."""

    name: str
    frames: int

    def run(self, tracker: Tracker, on_frame: Callable[[], None] | None = None) -> VideoResult: ...


class Progress:
    """One bar for a run: frames of every video, and videos finished, in the postfix."""

    def __init__(self, jobs: Sequence[Job], desc: str) -> None:
        self.frames = {job.name: max(job.frames, 0) for job in jobs}
        self.counts: dict[str, int] = {}
        self.finished = 0
        self.bar = tqdm(total=sum(self.frames.values()), desc=desc, unit="frame", disable=None)
        self._show()

    def set(self, name: str, count: int) -> None:
        """Frames of video ``name`` done so far (a retry starts again from 0)."""
        self.counts[name] = min(count, self.frames.get(name, count))
        self._show()

    def finish(self, result: VideoResult) -> None:
        self.counts[result.name] = self.frames.get(result.name, 0) if result.status == "done" else 0
        self.finished += 1
        self._show()

    def _show(self) -> None:
        self.bar.n = sum(self.counts.values())
        self.bar.set_postfix_str(f"videos {self.finished}/{len(self.frames)}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def run_jobs(
    jobs: Sequence[Job],
    settings: TrackSettings,
    *,
    workers: int | str = 1,
    ray_address: str | None = None,
    tracker: Tracker | None = None,
    max_retries: int = 2,
    desc: str = "videos",
) -> list[VideoResult]:
    """Track every job; results in the order of ``jobs``.

    ``workers=1`` without ``ray_address`` runs here, in order, with ``tracker`` (built from
    ``settings`` on first use when None). Otherwise Ray runs them (``ray_pool``): a worker
    that dies loses only its current video, tried again up to ``max_retries`` times.
    """
    workers = resolve_workers(workers, ray_address)
    if not jobs:
        return []
    progress = Progress(jobs, desc)
    try:
        if workers == 1 and ray_address is None:
            return _run_here(jobs, settings, tracker, progress)
        from pdmtrack.runs.ray_workers import run_on_ray

        results = run_on_ray(jobs, settings, workers=workers, address=ray_address, max_retries=max_retries, progress=progress)
        return [results[job.name] for job in jobs]
    finally:
        progress.close()
        for job in jobs:  # what killed workers left behind
            for partial in _partials(job):
                shutil.rmtree(partial, ignore_errors=True)


def _partials(job: VideoJob) -> list[Path]:
    """Staging folders of ``job`` (``track_job``), if it writes a folder."""
    out_dir = getattr(job, "out_dir", None)
    return list(out_dir.parent.glob(f".{out_dir.name}.partial-*")) if out_dir is not None else []


def _run_here(jobs: Sequence[Job], settings: TrackSettings, tracker: Tracker | None, progress: Progress) -> list[VideoResult]:
    results = []
    for job in jobs:
        if tracker is None:
            tracker = Tracker(settings)
        on_frame = functools.partial(_count_frame, progress, job.name, itertools.count(1))

        result = job.run(tracker, on_frame)
        progress.finish(result)
        results.append(result)
    return results


def _count_frame(progress: Progress, name: str, frames: Iterator[int]) -> None:
    progress.set(name, next(frames))


def default_threads() -> int:
    """Torch's intra-op threads in this process: workers use as many, so their floating
    point matches a one-process run exactly."""
    import torch

    return torch.get_num_threads()


def visible_gpus() -> int:
    """CUDA devices this process sees (0 without torch CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


__all__ = [
    "Progress",
    "finished_frames",
    "resolve_workers",
    "same_settings_as_before",
    "VideoJob",
    "VideoResult",
    "parse_workers",
    "run_jobs",
    "track_job",
]
