"""What the worker pool runs: video jobs, their results, one progress bar for a run, and
what a worker needs to know about its machine (GPUs, cores, torch threads).

A video is tracked into a hidden staging folder beside its output folder and renamed into
place when complete (:func:`track_job`), so an output folder is never a mixture of two
attempts, and a worker killed mid-video leaves nothing under the final name.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from pdmtrack.errors import InputError
from pdmtrack.io.files import read_json, replace_folder
from pdmtrack.runs.record import RUN_RECORD, check_replaceable
from pdmtrack.runs.video_folder import plan_video, track_to_folder
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


def finished_frames(out_dir: Path) -> int | None:
    """Frames written by the finished run whose record (``run_record``) is in ``out_dir``;
    None when no run finished there."""
    path = out_dir / RUN_RECORD
    record = read_json(path) if path.is_file() else None
    if not isinstance(record, dict) or not record.get("finished"):
        return None
    return int(record.get("frames_written") or 0)


def track_job(tracker: Tracker, job: VideoJob, on_frame: Callable[[], None] | None = None) -> VideoResult:
    """Track ``job`` with ``tracker`` into a staging folder and rename it into place; every
    error becomes a failed result (one line), so a batch goes on."""
    began = time.perf_counter()
    staging = job.out_dir.parent / f".{job.out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        check_replaceable(job.out_dir)
        plan = plan_video(
            job.video, staging, masks=job.masks, classes=list(job.classes), png=job.png, overlay=job.overlay,
            rle=job.rle, backend=tracker.settings.runtime.backend, settings=tracker.settings,
        )  # fmt: skip
        summary = track_to_folder(tracker, plan, on_frame=on_frame)
        check_replaceable(job.out_dir)  # again: the user may have put files there meanwhile
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
