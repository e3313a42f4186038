"""``PriorComposite``: the appearance of one feature source with the instance prior of another.

Label propagation matches the appearance source's features (DINOv3, say); the instance prior,
which tells an object from its look-alikes, is the PDM map computed on the prior source's
features (PDM's diffusion features), each on its own grid. The record handed on is the
appearance's, with the prior source's record in ``PDMFeatures.prior``; the propagator
resamples the prior maps to the appearance grid. Each source keeps its own cache (a
``CachedFeatureSource`` per source), so a later run with either source alone, or with both,
reads what the other computed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pdmtrack.features.types import FeatureSource, PDMFeatures


class PriorComposite:
    """A feature source whose records carry a second source's features as their ``prior``.

    ``hits`` counts frames both sources served from their caches, ``misses`` frames either
    computed (the counters ``VideoState`` reports)."""

    def __init__(self, appearance: FeatureSource, prior: FeatureSource) -> None:
        self.appearance = appearance
        self.prior = prior
        self.hits = 0
        self.misses = 0

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        """frames (B, H, W, 3) uint8 RGB -> the appearance source's features, ``prior`` set."""
        before = _hits(self.appearance) + _hits(self.prior)
        features = replace(self.appearance(frames), prior=self.prior(frames))
        served = _hits(self.appearance) + _hits(self.prior) - before == 2 * len(frames)
        if served:
            self.hits += len(frames)
        else:
            self.misses += len(frames)
        return features

    def probe(self, frames: np.ndarray) -> PDMFeatures:
        """Both sources' features without their caches (``--batch-size auto`` measures with it)."""
        return replace(_probe(self.appearance, frames), prior=_probe(self.prior, frames))


def _hits(source: FeatureSource) -> int:
    return int(getattr(source, "hits", 0))


def _probe(source: FeatureSource, frames: np.ndarray) -> PDMFeatures:
    probe = getattr(source, "probe", None)
    return source(frames) if probe is None else probe(frames)
