"""Factories: the one place the tracker, the evaluators and the workers get models from.

The heavy parts (diffusion weights, SAM) are loaded once per process with ``load_diffusion``
and ``load_refiner``; ``feature_source`` is cheap (it encodes a prompt) and is built per video.
"""

from __future__ import annotations

from pdmtrack.config import TrackSettings
from pdmtrack.device import resolve_device, resolve_dtype
from pdmtrack.features.cache import CachedFeatureSource, FeatureCache
from pdmtrack.features.cache_folder import CacheFolder, resolve_max_bytes
from pdmtrack.features.compile import compile_unet
from pdmtrack.features.dift import (
    DIFT_CORRESPONDENCE_TIMESTEP,
    DIFT_DAVIS_TIMESTEP,
    DiftExtractor,
)
from pdmtrack.features.dinov2 import Dinov2Extractor, VitParts, load_vit
from pdmtrack.features.extractor import FeatureExtractor
from pdmtrack.features.hooks import resolve_block
from pdmtrack.features.model import DiffusionParts, load_diffusion_parts
from pdmtrack.features.types import FeatureSource
from pdmtrack.sam.loading import default_sam_dir, load_sam
from pdmtrack.sam.refine import SamRefiner


def load_diffusion(settings: TrackSettings) -> DiffusionParts:
    """The diffusion model's parts (UNet, VAE, text encoders) on the settings' device and dtype,
    the UNet compiled with ``--compile``."""
    device = resolve_device(settings.runtime.device)
    parts = load_diffusion_parts(settings.features, device, resolve_dtype(settings.runtime.dtype, device))
    if settings.runtime.compile:
        compile_unet(parts.unet, resolve_block(parts.unet, settings.features.layer))
    return parts


def load_refiner(settings: TrackSettings) -> SamRefiner | None:
    """SAM as ``settings.sam`` asks (None for ``--sam none``); checkpoints cache beside features."""
    runtime = settings.runtime
    sam_dir = runtime.cache_dir / "sam" if runtime.cache_dir else default_sam_dir()
    device = resolve_device(runtime.device)
    return load_sam(settings.sam, device, sam_dir, resolve_dtype(runtime.dtype, device))


def feature_source(parts: DiffusionParts, settings: TrackSettings, classes: list[str]) -> CachedFeatureSource:
    """The PDM feature extractor over ``parts`` (prompt naming ``classes``) behind the feature cache."""
    device = resolve_device(settings.runtime.device)
    extractor = FeatureExtractor(parts, settings.features, classes, device, resolve_dtype(settings.runtime.dtype, device))
    return _cached(extractor, settings)


def _cached(extractor: FeatureSource, settings: TrackSettings) -> CachedFeatureSource:
    """``extractor`` (with a ``fingerprint``) behind the feature cache unless ``--no-cache``."""
    runtime = settings.runtime
    cache = None
    if runtime.use_cache:
        description = extractor.description  # type: ignore[attr-defined]
        fingerprint = extractor.fingerprint  # type: ignore[attr-defined]
        cache = FeatureCache(runtime.cache_dir, fingerprint, max_gb=runtime.cache_max_gb, description=description)
    return CachedFeatureSource(extractor, cache)


def check_feature_cache(settings: TrackSettings) -> None:
    """InputError now (before any model loads) when the feature cache folder cannot be used:
    not creatable or writable, its disk full, or a bad bound."""
    runtime = settings.runtime
    if runtime.use_cache:
        CacheFolder(runtime.cache_dir, resolve_max_bytes(runtime.cache_max_gb)).check()


# DIFT's published (timestep, up-block) per task: correspondence on images, DAVIS propagation.
DIFT_SETTINGS = {"image": (DIFT_CORRESPONDENCE_TIMESTEP, 1), "video": (DIFT_DAVIS_TIMESTEP, 2)}


def features_for(
    settings: TrackSettings,
    classes: list[str],
    task: str = "image",
    parts: DiffusionParts | None = None,
    vit: VitParts | None = None,
) -> CachedFeatureSource:
    """The feature source ``settings.source.kind`` names (pdm, dift or dinov2), cached.

    ``parts`` / ``vit``: the diffusion parts (pdm, dift) or the DINOv2 ViT (dinov2) already
    loaded; loaded here when None. ``task`` (image or video) picks DIFT's published timestep
    and up-block when not set. Baselines ignore ``classes``: they have no semantic map.
    """
    source = settings.source
    device = resolve_device(settings.runtime.device)
    dtype = resolve_dtype(settings.runtime.dtype, device)
    if source.kind == "dinov2":
        vit = vit if vit is not None else load_vit(source.dinov2_model, device, dtype)
        return _cached(Dinov2Extractor(vit, source.dinov2_size), settings)
    parts = parts if parts is not None else load_diffusion(settings)
    if source.kind == "pdm":
        return feature_source(parts, settings, classes)
    timestep, up_block = DIFT_SETTINGS[task]
    dift = DiftExtractor(
        parts,
        settings.features,
        timestep=source.dift_timestep or timestep,
        up_block=up_block if source.dift_up_block is None else source.dift_up_block,
        ensemble=source.dift_ensemble,
        device=device,
        dtype=dtype,
    )
    return _cached(dift, settings)
