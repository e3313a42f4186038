"""Ray workers for :func:`pdmtrack.runs.pool.run_jobs`: one actor per GPU (CPU actors on a
machine or cluster without GPUs), each holding a :class:`~pdmtrack.Tracker`.

The driver hands each idle actor the largest video left. An actor that dies (killed, out
of memory, its node lost) loses only its current video: the video goes back to the queue
(at most ``max_retries`` more attempts, then it is reported failed with the reason) and a
new actor takes the dead one's place. Videos are written by ``jobs.track_job`` into a
staging folder renamed into place when complete, so a retry never leaves a mixture.
Actors report their frames to a small progress actor that the driver reads for its one bar.

Ray is optional (``pip install "pdmtrack[ray]"``); it is imported only here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.runs.jobs import Job, Progress, VideoResult, cpu_count, default_threads, one_line, visible_gpus

_POLL_SECONDS = 0.5  # how often the driver refreshes the bar
_REPORT_SECONDS = 0.5  # how often an actor reports its frames


def import_ray():
    """The ``ray`` module, or one line saying how to get it."""
    try:
        import ray
    except ImportError:
        raise ParameterError("workers", 'more than one worker (or --ray-address) needs Ray: pip install "pdmtrack[ray]"') from None
    return ray


class TrackerWorker:
    """A Ray actor: one Tracker, loaded once (in ``ready``), tracking one video per call.

    It works in the driver's folder ``cwd`` where that folder exists, so relative paths
    (videos, ``-o``, ``--model``, ``--cache-dir``) mean what they mean to the driver (Ray
    starts actors in the folder of the process that started Ray, which may be another)."""

    def __init__(self, settings: TrackSettings, threads: int, progress, cwd: str) -> None:
        self.settings, self.threads, self.progress = settings, threads, progress
        self.tracker = None
        if os.path.isdir(cwd):
            os.chdir(cwd)

    def ready(self) -> str:
        """Load the models (once); where this worker runs (its host and device)."""
        if self.tracker is None:
            import torch

            from pdmtrack.tracking.tracker import Tracker

            torch.set_num_threads(self.threads)
            self.tracker = Tracker(self.settings)
        return f"{os.uname().nodename}:{self.tracker.device}"

    def run(self, job: Job) -> VideoResult:
        self.ready()
        count, last = [0], [0.0]

        def on_frame() -> None:
            count[0] += 1
            now = time.monotonic()
            if now - last[0] >= _REPORT_SECONDS:
                last[0] = now
                self.progress.set.remote(job.name, count[0])

        self.progress.set.remote(job.name, 0)
        return job.run(self.tracker, on_frame)


class ProgressBoard:
    """A Ray actor holding the latest frame count each running video reported."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def set(self, name: str, count: int) -> None:
        self.counts[name] = count

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


def run_on_ray(
    jobs: Sequence[Job], settings: TrackSettings, *, workers: int | str, address: str | None, max_retries: int, progress: Progress
) -> dict[str, VideoResult]:
    """Run ``jobs`` on Ray actors (see the module doc); results by job name."""
    ray = import_ray()
    started = _start(ray, address, workers)
    try:
        count, options = _worker_options(ray, workers, settings)
        board = ray.remote(num_cpus=0)(ProgressBoard).remote()
        actor_class = ray.remote(**options)(TrackerWorker)

        def spawn():
            return actor_class.remote(settings, default_threads(), board, os.getcwd())

        actors = [spawn() for _ in range(min(count, len(jobs)))]
        _wait_ready(ray, actors)
        return _schedule(ray, jobs, actors, spawn, board, max_retries, progress)
    finally:
        if started:
            ray.shutdown()


def _start(ray, address: str | None, workers: int | str) -> bool:
    """Join ``address`` or start a local cluster, unless Ray is already up; True if started here.
    A local cluster's workers import this very pdmtrack; a joined cluster's nodes need
    pdmtrack installed."""
    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ParameterError("ray_address", f"cannot join the Ray cluster at {address} ({one_line(err)})") from err
        return True
    path = os.pathsep.join(p for p in (str(package_parent()), os.environ.get("PYTHONPATH", "")) if p)
    local_cpus = max(cpu_count(), workers if isinstance(workers, int) else 1)
    ray.init(num_cpus=local_cpus, num_gpus=visible_gpus(), runtime_env={"env_vars": {"PYTHONPATH": path}}, **options)
    return True


def package_parent() -> Path:
    """The folder holding the ``pdmtrack`` package this process runs: local workers import
    the same checkout (first on their PYTHONPATH), not another installed copy."""
    return Path(__file__).resolve().parents[2]


def _worker_options(ray, workers: int | str, settings: TrackSettings) -> tuple[int, dict]:
    """(number of actors, their Ray resource options): ``auto`` is one per GPU of the
    cluster, else one per ``default_threads()`` CPUs; GPUs are shared when fewer than actors."""
    resources = ray.cluster_resources()
    gpus = 0.0 if settings.runtime.device == "cpu" else float(resources.get("GPU", 0))
    if workers == "auto":
        count = int(gpus) if gpus >= 1 else max(1, int(resources.get("CPU", 1)) // max(1, default_threads()))
    else:
        count = int(workers)
    options: dict = {"num_cpus": 1, "max_restarts": 0}
    if gpus:
        options["num_gpus"] = 1 if gpus >= count else gpus / count
    return count, options


def _wait_ready(ray, actors: list) -> None:
    """Wait for every actor's models; a setup error (bad --model, ...) is raised as itself."""
    try:
        ray.get([actor.ready.remote() for actor in actors])
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, InputError):
            raise InputError(cause.where, cause.problem) from None
        raise


def _schedule(ray, jobs, actors, spawn, board, max_retries: int, progress: Progress) -> dict[str, VideoResult]:
    """Hand the largest waiting job to each idle actor until every job has a result."""
    waiting = sorted(jobs, key=lambda job: -job.frames)
    idle = list(actors)
    running: dict = {}  # object ref -> (actor, job)
    attempts: dict[str, int] = {}
    results: dict[str, VideoResult] = {}
    while waiting or running:
        while idle and waiting:
            actor, job = idle.pop(), waiting.pop(0)
            attempts[job.name] = attempts.get(job.name, 0) + 1
            running[actor.run.remote(job)] = (actor, job)
        ready, _ = ray.wait(list(running), num_returns=1, timeout=_POLL_SECONDS)
        for name, count in ray.get(board.snapshot.remote()).items():
            if name not in results:
                progress.set(name, count)
        for ref in ready:
            actor, job = running.pop(ref)
            try:
                result = ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayActorError as err:  # the worker died: try the video again elsewhere
                _kill(ray, actor)
                idle.append(spawn())
                if attempts[job.name] <= max_retries:
                    progress.set(job.name, 0)
                    waiting.insert(0, job)
                    waiting.sort(key=lambda j: -j.frames)
                    continue
                result = VideoResult(job.name, "failed", reason=f"its worker died {attempts[job.name]} times: {one_line(err)}")
            except ray.exceptions.RayError as err:
                idle.append(actor)
                result = VideoResult(job.name, "failed", reason=one_line(err))
            result.attempts = attempts[job.name]
            results[job.name] = result
            progress.finish(result)
    return results


def _kill(ray, actor) -> None:
    """Make sure a failed actor is gone (it may be merely unreachable)."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead
        pass
