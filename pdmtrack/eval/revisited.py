"""Revisited Oxford and Paris (Radenovic et al., CVPR 2018): reader and the official protocol.

Layout (as revisitop downloads it): ``DATA/<dataset>/gnd_<dataset>.pkl`` and
``DATA/<dataset>/jpg/<name>.jpg`` (``--root`` may also be the dataset folder itself). The
ground-truth pickle holds ``imlist``, ``qimlist`` and ``gnd`` (per query: ``bbx``, ``easy``,
``hard``, ``junk``); it is read with :mod:`pdmtrack.io.safe_pickle` (plain data only). Queries
are their images cropped to ``bbx`` (rounded, as PIL's crop does).

Protocol (revisitop's ``example_evaluate.py``): Medium: positives = easy + hard, junk ignored;
Hard: positives = hard, junk + easy ignored. AP per query is revisitop's ``compute_ap``
(``metrics.revisited_average_precision``); mAP is the mean over queries with a positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdmtrack.config import GlobalConfig, TrackSettings
from pdmtrack.device import resolve_device
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.eval.metrics import revisited_average_precision
from pdmtrack.io.images import read_rgb
from pdmtrack.io.reports import Table, write_report
from pdmtrack.io.safe_pickle import load_plain_pickle
from pdmtrack.personal.global_descriptor import GlobalDescriptor
from pdmtrack.personal.search import Query, check_rerank, rank_queries
from pdmtrack.tracking.tracker import Tracker

DATASETS = ("roxford5k", "rparis6k")
LEVELS = ("medium", "hard")


@dataclass(frozen=True)
class RevisitedQuery:
    """One query: its image, its box (x0, y0, x1, y1) and the gallery indices per label."""

    name: str
    path: Path
    box: tuple[int, int, int, int]
    easy: np.ndarray
    hard: np.ndarray
    junk: np.ndarray

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The query region of its (H, W, 3) image."""
        x0, y0, x1, y1 = self.box
        height, width = image.shape[:2]
        crop = image[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)]
        if crop.size == 0:
            raise InputError(self.path, f"query box {self.box} lies outside the {width}x{height} image")
        return crop

    def labels(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        """(positives, junk) under ``level`` (medium or hard)."""
        if level == "medium":
            return np.concatenate([self.easy, self.hard]), self.junk
        if level == "hard":
            return self.hard, np.concatenate([self.junk, self.easy])
        raise ValueError(f"unknown level {level!r} (medium or hard)")


@dataclass(frozen=True)
class RevisitedDataset:
    """The gallery images and the queries of one revisited dataset."""

    name: str
    images: list[Path]
    queries: list[RevisitedQuery]


def _indices(value: object) -> np.ndarray:
    return np.asarray(value, dtype=np.int64).ravel()


def load_revisited(root: str | Path, dataset: str) -> RevisitedDataset:
    """Read ``gnd_<dataset>.pkl`` under ``root`` (or ``root/<dataset>``) safely."""
    if dataset not in DATASETS:
        raise ParameterError("dataset", f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
    root = Path(root)
    folder = root / dataset if (root / dataset).is_dir() else root
    gnd_file = folder / f"gnd_{dataset}.pkl"
    if not gnd_file.is_file():
        raise InputError(gnd_file, "ground truth not found (download it with revisitop's download.py)")
    cfg = load_plain_pickle(gnd_file)
    try:
        images = [folder / "jpg" / f"{name}.jpg" for name in cfg["imlist"]]  # type: ignore[index]
        queries = []
        for name, item in zip(cfg["qimlist"], cfg["gnd"], strict=True):  # type: ignore[index]
            box = tuple(int(round(float(v))) for v in np.asarray(item["bbx"]).ravel()[:4])
            queries.append(
                RevisitedQuery(
                    name=str(name),
                    path=folder / "jpg" / f"{name}.jpg",
                    box=box,  # type: ignore[arg-type]
                    easy=_indices(item["easy"]),
                    hard=_indices(item["hard"]),
                    junk=_indices(item["junk"]),
                )
            )
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise InputError(gnd_file, f"unexpected ground-truth layout ({type(err).__name__}: {err})") from err
    if not queries:
        raise InputError(gnd_file, "lists no queries")
    return RevisitedDataset(dataset, images, queries)


@dataclass(frozen=True)
class RevisitedReport:
    """AP per query and level for rankings of a revisited dataset."""

    dataset: str
    queries: list[str]
    ap: dict[str, list[float]]  # level -> AP per query (NaN: no positive at that level)
    settings: dict

    def global_scores(self) -> dict[str, float]:
        """mAP per level over the queries that have positives."""
        return {f"mAP {level}": float(np.nanmean(self.ap[level])) for level in LEVELS}

    def tables(self) -> tuple[Table, Table]:
        scores = self.global_scores()
        rows = [[name, *(self.ap[level][i] for level in LEVELS)] for i, name in enumerate(self.queries)]
        return (
            Table(f"Global {self.dataset} results", list(scores), [list(scores.values())]),
            Table(f"Per-query {self.dataset} results", ["Query", *(f"AP {level}" for level in LEVELS)], rows),
        )

    def write(self, out_dir: Path) -> list[Path]:
        """``<dataset>_{global,details}.csv`` and ``<dataset>_report.json``; print the tables."""
        payload = {
            "benchmark": self.dataset,
            "global": self.global_scores(),
            "per_query": [{"query": q, **{level: self.ap[level][i] for level in LEVELS}} for i, q in enumerate(self.queries)],
            "settings": self.settings,
        }
        return write_report(out_dir, self.dataset, *self.tables(), payload)


def score_rankings(dataset: RevisitedDataset, rankings: list[np.ndarray], settings: dict) -> RevisitedReport:
    """Medium and Hard AP of each query's ranking (gallery indices, best first)."""
    if len(rankings) != len(dataset.queries):
        raise ValueError(f"{len(rankings)} rankings for {len(dataset.queries)} queries")
    ap = {
        level: [revisited_average_precision(ranking, *query.labels(level)) for query, ranking in zip(dataset.queries, rankings)]
        for level in LEVELS
    }
    return RevisitedReport(dataset.name, [q.name for q in dataset.queries], ap, settings)


def evaluate_revisited(
    root: str | Path,
    dataset: str,
    *,
    out_dir: str | Path,
    settings: TrackSettings | None = None,
    tracker: Tracker | None = None,
    descriptor: GlobalDescriptor | None = None,
    rerank: int | None = None,
    global_config: GlobalConfig | None = None,
) -> RevisitedReport:
    """Rank the gallery for every query crop and score it (mAP Medium / Hard).

    ``rerank=None``: PDM (or the ``features`` baseline) over the whole gallery; otherwise a
    global descriptor (``descriptor``, else ``global_config``'s, DINOv2 GeM by default) ranks
    and PDM re-ranks its first ``rerank`` (0: the global ranking alone, no diffusion model
    loaded). The features come from ``tracker`` (loaded from ``settings`` when none is given).
    The query mask is the whole crop. Writes ``<dataset>_{global,details}.csv`` and ``<dataset>_report.json``.
    """
    check_rerank(rerank)
    data = load_revisited(root, dataset)
    source = None
    if rerank != 0:
        tracker = tracker if tracker is not None else Tracker(settings or TrackSettings())
        source = tracker.feature_source([], task="image")
    settings = tracker.settings if tracker is not None else settings or TrackSettings()
    if descriptor is None and rerank is not None:
        descriptor = GlobalDescriptor(global_config or GlobalConfig(), settings.runtime.device, settings.runtime.dtype)
    queries = []
    for query in data.queries:
        crop = query.crop(read_rgb(query.path))
        queries.append(Query(crop, mask=np.ones(crop.shape[:2], dtype=bool)))
    rankings = rank_queries(
        queries,
        data.images,
        match=settings.match,
        device=resolve_device(settings.runtime.device),
        source=source,
        descriptor=descriptor,
        rerank=rerank,
    )
    record = {**settings.to_dict(), "rerank": rerank, "global": None if descriptor is None else descriptor.record}
    report = score_rankings(data, rankings, record)
    report.write(out_dir)
    return report
