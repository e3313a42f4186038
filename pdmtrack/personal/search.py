"""Ranking a gallery of image files for personalised queries: PDM over the whole gallery, or a
global-descriptor first stage whose top candidates PDM re-ranks (the paper's "DINOv2 + PDM").

Gallery images go through the feature source one image per call, so with the feature cache
every image is its own cache entry: a second query over the same gallery (or the same
candidates) reads features instead of computing them, whatever the order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pdmtrack.config import MatchConfig, check_at_least
from pdmtrack.errors import ParameterError
from pdmtrack.features.types import FeatureSource, PDMFeatures
from pdmtrack.io.images import read_rgb
from pdmtrack.personal.scoring import QueryScorer
from pdmtrack.tracking.matching import mask_to_grid_bool, reference_mask_from_attention


def check_rerank(rerank: int | None) -> None:
    """ParameterError unless ``rerank`` (the first-stage candidates PDM re-ranks) is None or at least 0."""
    if rerank is not None:
        check_at_least("rerank", rerank, 0)


@dataclass
class Query:
    """A personalised query: the image, the instance's (H, W) mask (None: from the class
    name's attention), and the row of its class in the source's class vectors (None: none)."""

    image: np.ndarray
    mask: np.ndarray | None = None
    class_index: int | None = None


def query_scorer(source: FeatureSource, query: Query, match: MatchConfig, device: torch.device) -> QueryScorer:
    """The query's features and reference tokens, ready to score gallery images."""
    features = source(query.image[None]).to(device)
    if query.mask is not None:
        ref_mask = mask_to_grid_bool(query.mask, features.grid, match.min_fraction)
        if not ref_mask.any():
            raise ParameterError("mask", "the query mask is empty")
    else:
        if query.class_index is None or features.class_attention is None:
            raise ParameterError("classes", "give --mask, or --cls with a feature source that has a semantic map (pdm)")
        ref_mask = reference_mask_from_attention(features.class_attention[0, query.class_index], match.tau)
    return QueryScorer(features, ref_mask, query.class_index, match)


def gallery_features(source: FeatureSource, path: Path, device: torch.device) -> PDMFeatures:
    """One gallery image's features (one source call: one cache entry per image)."""
    return source(read_rgb(path)[None]).to(device)


def pdm_scores(
    source: FeatureSource, scorers: Sequence[QueryScorer], gallery: Sequence[Path], device: torch.device, desc: str = "gallery"
) -> np.ndarray:
    """(Q, N) PDM global scores of every gallery image for every query, in one pass over the gallery."""
    for path in tqdm(gallery, desc=desc, unit="image", disable=None):
        features = gallery_features(source, path, device)
        for scorer in scorers:
            scorer.add(features)
    return np.stack([scorer.scores() for scorer in scorers])


def rerank_head(
    first_stage: np.ndarray, candidates: int, source: FeatureSource, scorer: QueryScorer, gallery: Sequence[Path], device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(order, PDM scores of the re-ranked head): the first ``candidates`` of a first-stage order
    (gallery positions, best first) re-ordered by PDM, the rest left in first-stage order."""
    head = np.asarray(first_stage[:candidates])
    scores = pdm_scores(source, [scorer], [gallery[i] for i in head], device, desc="re-rank")[0]
    order = np.argsort(-scores, kind="stable")
    return np.concatenate([head[order], first_stage[candidates:]]), scores[order]


def instance_crop(query: Query) -> np.ndarray:
    """The query image cropped to its mask's bounding box (the whole image without a mask)."""
    if query.mask is None or not query.mask.any():
        return query.image
    rows, cols = np.flatnonzero(query.mask.any(axis=1)), np.flatnonzero(query.mask.any(axis=0))
    return query.image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def embed_gallery(descriptor: Callable[[np.ndarray], np.ndarray], gallery: Sequence[Path]) -> np.ndarray:
    """(N, D) global descriptors of the gallery images."""
    return np.stack([descriptor(read_rgb(path)) for path in tqdm(gallery, desc="global", unit="image", disable=None)])


def global_ranking(vectors: np.ndarray, descriptor: Callable[[np.ndarray], np.ndarray], query: Query) -> tuple[np.ndarray, np.ndarray]:
    """(order, similarities in that order) of the gallery ``vectors`` for the query's instance crop."""
    similarity = vectors @ descriptor(instance_crop(query))
    order = np.argsort(-similarity, kind="stable")
    return order, similarity[order]


def rank_queries(
    queries: Sequence[Query],
    gallery: Sequence[Path],
    *,
    match: MatchConfig,
    device: torch.device,
    source: FeatureSource | None,
    descriptor: Callable[[np.ndarray], np.ndarray] | None = None,
    rerank: int | None = None,
) -> list[np.ndarray]:
    """Each query's gallery order (positions, best first).

    ``rerank=None``: PDM over the whole gallery (one pass for all queries). Otherwise the
    ``descriptor`` (image -> unit vector) ranks the gallery by cosine similarity to each
    query's instance crop, and PDM re-ranks the first ``rerank`` (0: the first stage alone).
    """
    if rerank is None:
        scorers = [query_scorer(source, query, match, device) for query in queries]  # type: ignore[arg-type]
        return [np.argsort(-scores, kind="stable") for scores in pdm_scores(source, scorers, gallery, device)]  # type: ignore[arg-type]
    if descriptor is None:
        raise ValueError("a first stage needs a global descriptor")
    vectors = embed_gallery(descriptor, gallery)
    orders = []
    for query in queries:
        first, _ = global_ranking(vectors, descriptor, query)
        if rerank > 0:
            first, _ = rerank_head(first, rerank, source, query_scorer(source, query, match, device), gallery, device)  # type: ignore[arg-type]
        orders.append(first)
    return orders
