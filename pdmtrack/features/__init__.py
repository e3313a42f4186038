"""PDM diffusion features: model loading, inversion, attention hooks, extraction, cache."""

from pdmtrack.features.types import FeatureSource, PDMFeatures

__all__ = ["FeatureSource", "PDMFeatures"]
