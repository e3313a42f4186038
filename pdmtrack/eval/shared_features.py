"""Image features computed by several workers, handed over through the feature cache.

PerMIS-image and PerMIR spend their time on features of single images. With ``--workers``
the images' batches become jobs of :func:`pdmtrack.runs.pool.run_jobs`: each worker computes
its batches into the (shared) feature cache; the evaluation then runs in this process with
a feature source that only reads the cache. The batches are exactly those the one-process
run forms (:func:`feature_batches`), so every feature, hence every score, is the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdmtrack.config import TrackSettings
from pdmtrack.device import resolve_device
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.eval.davis_dataset import image_size
from pdmtrack.features.batch_size import resolve_batch_size
from pdmtrack.features.cache import CachedFeatureSource, FeatureCache
from pdmtrack.features.types import PDMFeatures
from pdmtrack.io.images import read_rgb
from pdmtrack.runs.jobs import VideoResult
from pdmtrack.runs.pool import run_jobs
from pdmtrack.tracking.tracker import Tracker

_BATCHES_PER_JOB = 16


def feature_batches(paths: Sequence[Path], batch_size: int) -> list[list[int]]:
    """Positions of ``paths`` in the batches their features are computed in: images of one
    size together, ``batch_size`` at a time, in order of first appearance."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for position, path in enumerate(paths):
        by_size.setdefault(image_size(path), []).append(position)
    step = max(1, batch_size)
    return [positions[start : start + step] for positions in by_size.values() for start in range(0, len(positions), step)]


@dataclass(frozen=True)
class FeatureJob:
    """Batches of images whose features a worker writes into the feature cache."""

    name: str
    batches: tuple[tuple[Path, ...], ...]
    classes: tuple[str, ...]
    frames: int  # images: the scheduler's size estimate

    def run(self, tracker: Tracker, on_frame: Callable[[], None] | None = None) -> VideoResult:
        began = time.perf_counter()
        source = tracker.feature_source(list(self.classes), task="image")
        for batch in self.batches:
            source(np.stack([read_rgb(path) for path in batch]))
            for _ in batch:
                if on_frame is not None:
                    on_frame()
        cache = getattr(source, "cache", None)
        details = {} if cache is None else {"fingerprint": cache.fingerprint, "description": cache.description}
        return VideoResult(self.name, "done", self.frames, time.perf_counter() - began, details=details)


class _NotCached:
    """The feature source behind the cache-only reader: a miss means an evicted entry."""

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        raise ParameterError(
            "cache_max_gb",
            f"features of {len(frames)} images left the feature cache before the evaluation read them; "
            "raise --cache-max-gb or run with --workers 1",
        )


def precompute_features(
    groups: Sequence[Sequence[Path]], classes: Sequence[str], settings: TrackSettings, *, workers: int | str, ray_address: str | None
) -> CachedFeatureSource:
    """Compute the features of every group's images (each group batched as
    ``extract_features`` does) on the workers; a source reading them from the cache."""
    if settings.source.kind != "pdm":
        raise ParameterError("workers", f"more than one worker computes PDM features only, not '{settings.source.kind}'")
    if not settings.runtime.use_cache:
        raise ParameterError("workers", "more than one worker hands features over through the feature cache: drop --no-cache")
    size = resolve_batch_size(settings.runtime.batch_size, resolve_device(settings.runtime.device))  # as the scoring will
    batches = [tuple(group[i] for i in positions) for group in groups for positions in feature_batches(group, size)]
    chunks = [batches[start : start + _BATCHES_PER_JOB] for start in range(0, len(batches), _BATCHES_PER_JOB)]
    jobs = [
        FeatureJob(f"features {index + 1}/{len(chunks)}", tuple(chunk), tuple(classes), sum(map(len, chunk)))
        for index, chunk in enumerate(chunks)
    ]
    results = run_jobs(jobs, settings, workers=workers, ray_address=ray_address, desc="features")
    failed = [result for result in results if result.status != "done"]
    if failed:
        raise InputError(failed[0].name, f"feature extraction failed: {failed[0].reason}")
    details = results[0].details
    cache = FeatureCache(
        settings.runtime.cache_dir, details["fingerprint"], max_gb=settings.runtime.cache_max_gb, description=details["description"]
    )
    return CachedFeatureSource(_NotCached(), cache)
