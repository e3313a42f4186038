"""PerMIS (video, image) and PerMIR evaluation on a folder built by ``pdmtrack build-permis``.

- PerMIS-video: the DAVIS 2017 code path, unchanged, on ``<root>/permis-video``.
- PerMIS-image: per video, the query frame and its track's mask are the reference; the same
  instance is segmented in the video's two other frames. Without SAM the mask is the PDM
  combined map (min-max normalised per frame), bilinearly upsampled to the frame and
  thresholded at ``MatchConfig.segment_threshold`` (0.5: halfway between the frame's least
  and most similar cells). With SAM, the upsampled map against a constant background at
  that threshold goes through ``SamRefiner`` (box of the coarse mask, positive point at the
  map's peak). Reported: mIoU (mean over images), the cumulative IoU of the authors' code
  (sum of intersections / sum of unions) and boundary IoU (dilation ratio 0.02).
- PerMIR: every query (query frame + mask) ranks the whole gallery (the other frames of
  every video) by the PDM global score: the mean of the combined map, where the appearance
  and semantic maps are min-max normalised jointly over the whole gallery (a per-image
  min-max would erase the absolute similarity that ranks images). A query's positives are
  its own video's gallery frames. Reported: mAP and Recall@1/5/10.

Features are computed once per image (through the feature cache by default), so scoring all
query-gallery pairs costs matrix products only. The default feature source's prompt names
every category of the benchmark (sorted), so each video's class vector comes from the same
pass; a source passed in must either carry no class vectors (appearance only) or have been
built with ``benchmark_classes(videos)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pdmtrack.burst import PERMIS_VIDEO_CLASSES, PERMIS_VIDEO_DIR, PERMIS_VIDEO_SPLIT
from pdmtrack.config import GlobalConfig, TrackSettings
from pdmtrack.device import resolve_device
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.eval.davis import evaluate_davis
from pdmtrack.eval.davis_scoring import DavisReport
from pdmtrack.eval.metrics import average_precision, boundary_iou, mask_iou, recall_at_k
from pdmtrack.eval.shared_features import feature_batches, precompute_features
from pdmtrack.features.batch_size import resolve_batch_size
from pdmtrack.features.types import FeatureSource, PDMFeatures
from pdmtrack.io.files import read_json
from pdmtrack.io.images import read_rgb
from pdmtrack.io.masks import decode_rle
from pdmtrack.io.reports import Table, write_report
from pdmtrack.personal.global_descriptor import GlobalDescriptor
from pdmtrack.personal.scoring import QueryScorer
from pdmtrack.personal.search import Query, check_rerank, rank_queries
from pdmtrack.personal.segmenter import segment_from_maps
from pdmtrack.runs.pool import resolve_workers
from pdmtrack.tracking.matching import mask_to_grid_bool, pdm_map
from pdmtrack.tracking.tracker import Tracker

RECALL_KS = (1, 5, 10)


# --------------------------------------------------------------------------- the benchmark
@dataclass(frozen=True)
class BenchmarkVideo:
    """One video of the built benchmark: its chosen track's 3 frames (query first) and masks."""

    name: str
    category: str
    track_id: int
    frames: tuple[Path, ...]
    rles: tuple[dict, ...]  # the track's COCO RLE in each frame

    def mask(self, index: int) -> np.ndarray:
        """The track's (H, W) bool mask in frame ``index``."""
        return decode_rle(self.rles[index])


def _read_json(path: Path) -> dict:
    return read_json(path, "not found (is this a folder built by `pdmtrack build-permis`?)")  # type: ignore[return-value]


def load_benchmark(root: str | Path) -> list[BenchmarkVideo]:
    """The videos listed in ``root/manifest.json`` with their chosen frames and track masks."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "PerMIRS folder not found")
    manifest = _read_json(root / "manifest.json")
    videos = []
    try:
        for record in manifest["videos"]:
            masks = _read_json(root / record["masks"])
            track = str(record["track_id"])
            frames = tuple(root / frame["frame"] for frame in masks["frames"])
            rles = tuple(frame["objects"][track]["rle"] for frame in masks["frames"])
            videos.append(BenchmarkVideo(record["video"], record["category"], int(record["track_id"]), frames, rles))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(root / "manifest.json", f"unexpected layout ({type(err).__name__}: {err})") from err
    if not videos:
        raise InputError(root / "manifest.json", "lists no videos")
    return videos


def benchmark_classes(videos: list[BenchmarkVideo]) -> list[str]:
    """The benchmark's category names, sorted: the default feature source's class order."""
    return sorted({video.category for video in videos})


def extract_features(source: FeatureSource, paths: list[Path], batch_size: int, desc: str) -> list[PDMFeatures]:
    """Features of every image (one frame each), in batches of equal-size images
    (:func:`feature_batches`); only one batch of decoded images is held at a time."""
    features: list[PDMFeatures | None] = [None] * len(paths)
    with tqdm(total=len(paths), desc=desc, unit="image", disable=None) as bar:
        for chunk in feature_batches(paths, batch_size):
            out = source(np.stack([read_rgb(paths[p]) for p in chunk]))
            for slot, position in enumerate(chunk):
                features[position] = out.select(slot)
            bar.update(len(chunk))
    return features  # type: ignore[return-value]


def _class_index(features: PDMFeatures, classes: list[str], category: str) -> int | None:
    """Row of ``category`` in the features' class vectors; None when they carry none."""
    if features.class_vectors is None:
        return None
    if features.class_vectors.shape[0] != len(classes):
        count = features.class_vectors.shape[0]
        raise ValueError(f"the features carry {count} class vectors for {len(classes)} classes")
    return classes.index(category)


def _image_groups(videos: list[BenchmarkVideo]) -> list[list[Path]]:
    """PerMIS-image's feature groups: each video's frames."""
    return [list(video.frames) for video in videos]


def _permir_groups(videos: list[BenchmarkVideo]) -> list[list[Path]]:
    """PerMIR's feature groups: the queries (first frames), then the gallery (the others)."""
    return [[video.frames[0] for video in videos], [path for video in videos for path in video.frames[1:]]]


def _prepare(
    root: Path,
    settings: TrackSettings | None,
    tracker: Tracker | None,
    groups: Callable[[list[BenchmarkVideo]], list[list[Path]]] = _image_groups,
    workers: int | str = 1,
    ray_address: str | None = None,
) -> tuple[list[BenchmarkVideo], Tracker, FeatureSource, list[str]]:
    """The benchmark's videos, the tracker (loaded from ``settings`` unless given), its feature
    source for the benchmark's classes, and the classes. With ``workers`` other than 1 (or a
    ``ray_address``) and no ``tracker``, workers compute the features of ``groups(videos)``
    first and the tracker here reads them from the feature cache (``shared_features``)."""
    videos = load_benchmark(Path(root))
    classes = benchmark_classes(videos)
    if tracker is None:
        settings = settings or TrackSettings()
        workers = resolve_workers(workers, ray_address)
        shared = None
        if workers != 1 or ray_address is not None:
            shared = precompute_features(groups(videos), classes, settings, workers=workers, ray_address=ray_address)
        tracker = Tracker(settings, features=shared)
    return videos, tracker, tracker.feature_source(classes, task="image"), classes


# --------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class PairScores:
    """One PerMIS-image target frame: IoU, boundary IoU and the pixel counts behind cIoU."""

    video: str
    target: str
    iou: float
    biou: float
    intersection: int
    union: int


@dataclass(frozen=True)
class PermisImageReport:
    """PerMIS-image scores of every (reference, target) pair."""

    pairs: list[PairScores]
    settings: dict

    def global_scores(self) -> dict[str, float]:
        """mIoU (mean over images), cIoU (sum of intersections / sum of unions), bIoU (mean)."""
        union = sum(pair.union for pair in self.pairs)
        return {
            "mIoU": float(np.mean([pair.iou for pair in self.pairs])),
            "cIoU": sum(pair.intersection for pair in self.pairs) / union if union else 1.0,
            "bIoU": float(np.mean([pair.biou for pair in self.pairs])),
        }

    def tables(self) -> tuple[Table, Table]:
        """The global table (one row) and the per-pair table."""
        scores = self.global_scores()
        rows = [[pair.video, pair.target, pair.iou, pair.biou] for pair in self.pairs]
        return (
            Table("Global PerMIS-image results", list(scores), [list(scores.values())]),
            Table("Per-pair PerMIS-image results", ["Video", "Target", "IoU", "bIoU"], rows),
        )

    def write(self, out_dir: Path) -> list[Path]:
        """Write the CSVs and the JSON record into ``out_dir``; print the tables."""
        payload = {
            "benchmark": "PerMIS-image",
            "global": self.global_scores(),
            "per_pair": [asdict(pair) for pair in self.pairs],
            "settings": self.settings,
        }
        return write_report(out_dir, "permis_image", *self.tables(), payload)


@dataclass(frozen=True)
class QueryScores:
    """One PerMIR query: AP and Recall@k of the ranked gallery."""

    video: str
    ap: float
    recall: dict[int, float]


@dataclass(frozen=True)
class PermirReport:
    """PerMIR scores of every query."""

    queries: list[QueryScores]
    gallery_size: int
    settings: dict

    def global_scores(self) -> dict[str, float]:
        """mAP and the mean Recall@k over queries."""
        scores = {"mAP": float(np.mean([q.ap for q in self.queries]))}
        for k in RECALL_KS:
            scores[f"R@{k}"] = float(np.mean([q.recall[k] for q in self.queries]))
        return scores

    def tables(self) -> tuple[Table, Table]:
        """The global table (one row) and the per-query table."""
        scores = self.global_scores()
        columns = ["Query", "AP", *(f"R@{k}" for k in RECALL_KS)]
        rows = [[q.video, q.ap, *(q.recall[k] for k in RECALL_KS)] for q in self.queries]
        return (Table("Global PerMIR results", list(scores), [list(scores.values())]), Table("Per-query PerMIR results", columns, rows))

    def write(self, out_dir: Path) -> list[Path]:
        """Write the CSVs and the JSON record into ``out_dir``; print the tables."""
        payload = {
            "benchmark": "PerMIR",
            "gallery_size": self.gallery_size,
            "global": self.global_scores(),
            "per_query": [{"video": q.video, "ap": q.ap, **{f"R@{k}": q.recall[k] for k in RECALL_KS}} for q in self.queries],
            "settings": self.settings,
        }
        return write_report(out_dir, "permir", *self.tables(), payload)


# --------------------------------------------------------------------------- PerMIS-video
def evaluate_permis_video(
    root: str | Path,
    *,
    out_dir: str | Path | None,
    settings: TrackSettings | None = None,
    results_dir: str | Path | None = None,
    tracker: Tracker | None = None,
    track_fn: Callable | None = None,
    sequences: list[str] | None = None,
    workers: int | str = 1,
    ray_address: str | None = None,
) -> DavisReport:
    """J, F and J&F on ``root/permis-video`` through :func:`evaluate_davis` (first frame as
    reference; each video's category from ``classes.json`` is its class name); ``sequences``
    limits it to some videos; ``workers`` track videos in parallel as in :func:`evaluate_davis`."""
    video_root = Path(root) / PERMIS_VIDEO_DIR
    if not video_root.is_dir():
        raise InputError(video_root, "PerMIS-video folder not found (build it with `pdmtrack build-permis`)")
    class_map = video_root / PERMIS_VIDEO_CLASSES
    return evaluate_davis(
        video_root,
        PERMIS_VIDEO_SPLIT,
        results_dir=results_dir,
        out_dir=out_dir,
        sequences=sequences,
        class_map=class_map if class_map.is_file() else None,
        settings=settings,
        tracker=tracker,
        track_fn=track_fn,
        workers=workers,
        ray_address=ray_address,
    )


# --------------------------------------------------------------------------- PerMIS-image
def evaluate_permis_image(
    root: str | Path,
    *,
    out_dir: str | Path,
    settings: TrackSettings | None = None,
    tracker: Tracker | None = None,
    workers: int | str = 1,
    ray_address: str | None = None,
) -> PermisImageReport:
    """Segment each video's track in its two non-query frames from the query frame + mask,
    with ``tracker``'s features and refiner (a tracker is loaded from ``settings`` when none
    is given; ``workers`` may compute the features first, see :func:`_prepare`). Writes
    ``permis_image_{global,details}.csv`` and ``permis_image_report.json`` into ``out_dir``.
    """
    videos, tracker, source, classes = _prepare(root, settings, tracker, _image_groups, workers, ray_address)
    settings, refiner, device = tracker.settings, tracker.refiner, tracker.device
    match = settings.match
    pairs: list[PairScores] = []
    for video in tqdm(videos, desc="PerMIS-image", unit="video", disable=None):
        batch = resolve_batch_size(settings.runtime.batch_size, device)
        features = extract_features(source, list(video.frames), batch, desc=video.name)
        reference = features[0].to(device)
        ref_mask = mask_to_grid_bool(video.mask(0), reference.grid, match.min_fraction)
        targets = PDMFeatures.cat(features[1:]).to(device)
        maps = pdm_map(reference, ref_mask, targets, _class_index(reference, classes, video.category), match)
        for slot, target_index in enumerate(range(1, len(video.frames))):
            image = read_rgb(video.frames[target_index])
            predicted = segment_from_maps(maps[slot][None], image, match.segment_threshold, refiner) == 1
            truth = video.mask(target_index)
            pairs.append(
                PairScores(
                    video=video.name,
                    target=video.frames[target_index].name,
                    iou=mask_iou(predicted, truth),
                    biou=boundary_iou(predicted, truth),
                    intersection=int(np.count_nonzero(predicted & truth)),
                    union=int(np.count_nonzero(predicted | truth)),
                )
            )
    report = PermisImageReport(pairs, settings.to_dict())
    report.write(out_dir)
    return report


# --------------------------------------------------------------------------- PerMIR
@dataclass
class _Gallery:
    """Gallery features grouped by grid size (one stacked batch per grid)."""

    groups: list[tuple[list[int], PDMFeatures]]  # (gallery positions, their features)
    size: int

    @staticmethod
    def build(features: list[PDMFeatures], device: torch.device) -> _Gallery:
        by_grid: dict[tuple[int, int], list[int]] = {}
        for position, item in enumerate(features):
            by_grid.setdefault(item.grid, []).append(position)
        groups = [(positions, PDMFeatures.cat([features[p] for p in positions]).to(device)) for positions in by_grid.values()]
        return _Gallery(groups, len(features))

    def scores(self, reference: PDMFeatures, ref_mask: torch.Tensor, class_index: int | None, settings: TrackSettings) -> np.ndarray:
        """PDM global score of every gallery image for one reference (``QueryScorer``)."""
        scorer = QueryScorer(reference, ref_mask, class_index, settings.match)
        for _, group in self.groups:
            scorer.add(group)
        scores = np.empty(self.size)
        scores[np.concatenate([positions for positions, _ in self.groups])] = scorer.scores()
        return scores


def evaluate_permir(
    root: str | Path,
    *,
    out_dir: str | Path,
    settings: TrackSettings | None = None,
    tracker: Tracker | None = None,
    descriptor: Callable[[np.ndarray], np.ndarray] | None = None,
    rerank: int | None = None,
    global_config: GlobalConfig | None = None,
    workers: int | str = 1,
    ray_address: str | None = None,
) -> PermirReport:
    """Rank the whole gallery for every query by the PDM global score; mAP and Recall@1/5/10,
    with ``tracker``'s features (loaded from ``settings`` when none is given).

    With ``rerank`` N a global descriptor (``descriptor``, else ``global_config``'s, DINOv2 GeM
    by default) ranks the gallery by the query's instance crop and PDM re-ranks its N best (0:
    the global ranking alone, the paper's "DINOv2" row). Writes ``permir_{global,details}.csv``
    and ``permir_report.json``.
    ``workers`` may compute the PDM features first (see :func:`_prepare`; not with ``rerank``).
    """
    check_rerank(rerank)
    if rerank is not None:
        if workers != 1 or ray_address is not None:
            raise ParameterError("workers", "--rerank runs in one process; drop --workers/--ray-address")
        return _evaluate_permir_two_stage(root, out_dir, settings, tracker, descriptor, global_config, rerank)
    videos, tracker, source, classes = _prepare(root, settings, tracker, _permir_groups, workers, ray_address)
    settings, device = tracker.settings, tracker.device
    batch = resolve_batch_size(settings.runtime.batch_size, device)
    query_paths, gallery_paths = _permir_groups(videos)
    query_features = extract_features(source, query_paths, batch, desc="PerMIR queries")
    gallery = _Gallery.build(extract_features(source, gallery_paths, batch, desc="PerMIR gallery"), device)
    all_scores = []
    for index, video in enumerate(tqdm(videos, desc="PerMIR", unit="query", disable=None)):
        reference = query_features[index].to(device)
        ref_mask = mask_to_grid_bool(video.mask(0), reference.grid, settings.match.min_fraction)
        all_scores.append(gallery.scores(reference, ref_mask, _class_index(reference, classes, video.category), settings))
    return _permir_report(videos, all_scores, settings.to_dict(), out_dir)


def _permir_report(videos: list[BenchmarkVideo], all_scores: list[np.ndarray], record: dict, out_dir: Path) -> PermirReport:
    """AP and Recall@k of each query's gallery scores (positives: its own video's frames)."""
    gallery_owner = np.array([index for index, video in enumerate(videos) for _ in video.frames[1:]])
    results = []
    for index, (video, scores) in enumerate(zip(videos, all_scores)):
        positives = gallery_owner == index
        recall = {k: recall_at_k(scores, positives, k) for k in RECALL_KS}
        results.append(QueryScores(video.name, average_precision(scores, positives), recall))
    report = PermirReport(results, len(gallery_owner), record)
    report.write(out_dir)
    return report


def _evaluate_permir_two_stage(
    root: Path,
    out_dir: Path,
    settings: TrackSettings | None,
    tracker: Tracker | None,
    descriptor: Callable[[np.ndarray], np.ndarray] | None,
    global_config: GlobalConfig | None,
    rerank: int,
) -> PermirReport:
    """PerMIR with a global first stage (``descriptor``, else ``global_config``'s) and PDM
    re-ranking of its ``rerank`` best (the tracker, loaded from ``settings`` when none is
    given, only when something is re-ranked)."""
    videos = load_benchmark(Path(root))
    classes = benchmark_classes(videos)
    source = None
    if rerank > 0:
        tracker = tracker if tracker is not None else Tracker(settings or TrackSettings())
        source = tracker.feature_source(classes, task="image")
    settings = tracker.settings if tracker is not None else settings or TrackSettings()
    if descriptor is None:
        descriptor = GlobalDescriptor(global_config or GlobalConfig(), settings.runtime.device, settings.runtime.dtype)
    queries = [Query(read_rgb(v.frames[0]), v.mask(0), classes.index(v.category)) for v in videos]
    gallery_paths = [path for video in videos for path in video.frames[1:]]
    orders = rank_queries(
        queries,
        gallery_paths,
        match=settings.match,
        device=resolve_device(settings.runtime.device),
        source=source,
        descriptor=descriptor,
        rerank=rerank,
    )
    all_scores = []
    for order in orders:  # the order as scores: best first, no ties
        scores = np.empty(len(order))
        scores[order] = -np.arange(len(order), dtype=np.float64)
        all_scores.append(scores)
    record = {**settings.to_dict(), "rerank": rerank, "global": getattr(descriptor, "record", None)}
    return _permir_report(videos, all_scores, record, out_dir)
