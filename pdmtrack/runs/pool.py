"""Many videos at once: in this process (``workers=1``) or over Ray workers
(:mod:`pdmtrack.runs.ray_workers`), each holding one :class:`~pdmtrack.Tracker` (models
loaded once per worker), videos as tasks, largest first. ``propagate-batch`` and the
evaluators build :class:`~pdmtrack.runs.jobs.VideoJob` lists and call :func:`run_jobs`;
results are the same whatever the number of workers.
"""

from __future__ import annotations

import functools
import itertools
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from pdmtrack.config import TrackSettings
from pdmtrack.errors import ParameterError
from pdmtrack.io.files import ensure_writable_folder
from pdmtrack.runs.jobs import Job, Progress, VideoJob, VideoResult, cpu_count, default_threads, visible_gpus
from pdmtrack.tracking.tracker import Tracker


def parse_workers(text: str | int) -> int | str:
    """``--workers`` value: a positive integer or ``auto``."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        count = int(text)
    except ValueError:
        raise ParameterError("workers", f"'{text}' is not a number of workers or 'auto'") from None
    if count < 1:
        raise ParameterError("workers", f"must be at least 1, got {count}")
    return count


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
    for parent in dict.fromkeys(out_dir.parent for job in jobs if (out_dir := getattr(job, "out_dir", None)) is not None):
        ensure_writable_folder(parent)  # now, so no worker's probe creates, then removes, a folder another worker writes in
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
