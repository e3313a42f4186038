"""Spherical k-means (cosine) in torch: the part-level prototypes of OVDiff."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def spherical_kmeans(points: torch.Tensor, k: int, iterations: int, seed: int) -> torch.Tensor:
    """(N, C) points -> (min(k, N), C) unit-norm centroids.

    k-means++ seeding on the cosine distance (a CPU generator seeded with ``seed``: the same
    points give the same centroids), then Lloyd iterations until no assignment changes or
    ``iterations`` are done. A cluster that empties keeps its centroid.
    """
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"points must be a non-empty (N, C) tensor, got {tuple(points.shape)}")
    points = F.normalize(points.float(), dim=1)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    centroids = _seed_centroids(points, min(k, len(points)), generator)
    assignment = None
    for _ in range(iterations):
        new_assignment = (points @ centroids.T).argmax(1)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        filled = sums.norm(dim=1) > 0
        centroids = torch.where(filled[:, None], F.normalize(sums, dim=1), centroids)
    return centroids


def _seed_centroids(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++: each next seed drawn with probability proportional to its cosine distance."""
    first = int(torch.randint(len(points), (1,), generator=generator))
    chosen = [first]
    distance = (1 - points @ points[first]).clamp_min(0)
    for _ in range(1, k):
        weights = distance.cpu()
        if float(weights.sum()) <= 0:  # every point coincides with a seed: take any unchosen one
            weights = torch.ones(len(points))
            weights[chosen] = 0
        index = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(index)
        distance = torch.minimum(distance, (1 - points @ points[index]).clamp_min(0))
    return points[chosen].clone()
