"""``load_models``: the one place the tracker, OVDiff, the evaluators and the workers get
their models from, with the device and dtype resolved once.

The heavy parts (diffusion weights, the DINO ViT, SAM) are loaded once per process;
``Models.feature_source`` is cheap (it encodes a prompt) and is built per video.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch

from pdmtrack.config import TrackSettings
from pdmtrack.device import resolve_device, resolve_dtype
from pdmtrack.errors import ParameterError
from pdmtrack.features.cache import CachedFeatureSource, FeatureCache
from pdmtrack.features.cache_folder import CacheFolder, resolve_max_bytes
from pdmtrack.features.compile import compile_unet
from pdmtrack.features.composite import PriorComposite
from pdmtrack.features.dift import DIFT_CORRESPONDENCE_TIMESTEP, DIFT_DAVIS_TIMESTEP, DiftExtractor
from pdmtrack.features.dino import DinoExtractor, VitParts, load_vit
from pdmtrack.features.extractor import FeatureExtractor
from pdmtrack.features.hooks import resolve_block
from pdmtrack.features.model import DiffusionParts, load_diffusion_parts
from pdmtrack.features.types import FeatureSource
from pdmtrack.sam.loading import default_sam_dir, load_sam
from pdmtrack.sam.refine import SamRefiner

Part = TypeVar("Part")

# DIFT's published (timestep, up-block) per task: correspondence on images, DAVIS propagation.
DIFT_SETTINGS = {"image": (DIFT_CORRESPONDENCE_TIMESTEP, 1), "video": (DIFT_DAVIS_TIMESTEP, 2)}


@dataclass(frozen=True)
class Models:
    """The loaded models of ``settings`` on one device and dtype: the diffusion model's parts
    (``--features pdm`` / ``dift``, and ``--instance-prior pdm``), the DINO ViT (``dinov2`` /
    ``dinov3``), and SAM (None for ``--sam none``). A part not asked of ``load_models`` is None."""

    settings: TrackSettings
    device: torch.device
    dtype: torch.dtype
    parts: DiffusionParts | None = None
    vit: VitParts | None = None
    refiner: SamRefiner | None = None

    def feature_source(self, classes: list[str], task: str = "video") -> FeatureSource:
        """The features ``settings.source.kind`` names (pdm, dift, dinov2 or dinov3) behind the
        feature cache (unless ``--no-cache``); the PDM prompt names ``classes`` (the baselines
        have no semantic map and ignore them). ``task`` (image or video) picks DIFT's published
        timestep and up-block when they are not set. With ``--instance-prior pdm`` (video only)
        the records carry PDM's features as their ``prior``, each source cached on its own."""
        source = self.settings.source
        appearance = self.pdm_source(classes) if source.kind == "pdm" else self._baseline(source.kind, task)
        if source.instance_prior == "features":
            return appearance
        if task != "video":
            raise ParameterError(
                "instance_prior", "pdm applies to video propagation only (propagate, eval davis, eval permis --task video)"
            )
        return PriorComposite(appearance, self.pdm_source(classes))

    def _baseline(self, kind: str, task: str) -> CachedFeatureSource:
        """The cached features of a baseline ``kind``: dinov2, dinov3 or dift."""
        source = self.settings.source
        if kind == "dinov2":
            return self._cached(DinoExtractor(self._loaded(self.vit, "vit"), source.dinov2_size, "dinov2"))
        if kind == "dinov3":
            return self._cached(DinoExtractor(self._loaded(self.vit, "vit"), int(source.dinov3_size), "dinov3"))
        timestep, up_block = DIFT_SETTINGS[task]
        dift = DiftExtractor(
            self._loaded(self.parts, "parts"),
            self.settings.features,
            timestep=source.dift_timestep or timestep,
            up_block=up_block if source.dift_up_block is None else source.dift_up_block,
            ensemble=source.dift_ensemble,
            device=self.device,
            dtype=self.dtype,
        )
        return self._cached(dift)

    def pdm_source(self, classes: list[str]) -> CachedFeatureSource:
        """The PDM features of the diffusion model (prompt naming ``classes``), cached, whatever
        ``settings.source.kind`` says (OVDiff's prototypes are PDM features)."""
        extractor = FeatureExtractor(self._loaded(self.parts, "parts"), self.settings.features, classes, self.device, self.dtype)
        return self._cached(extractor)

    def _cached(self, extractor: FeatureSource) -> CachedFeatureSource:
        """``extractor`` (with a ``fingerprint``) behind the feature cache unless ``--no-cache``."""
        runtime = self.settings.runtime
        cache = None
        if runtime.use_cache:
            description = extractor.description  # type: ignore[attr-defined]
            fingerprint = extractor.fingerprint  # type: ignore[attr-defined]
            cache = FeatureCache(runtime.cache_dir, fingerprint, max_gb=runtime.cache_max_gb, description=description)
        return CachedFeatureSource(extractor, cache)

    @staticmethod
    def _loaded(part: Part | None, name: str) -> Part:
        if part is None:
            raise ValueError(f"the models were loaded without their {name} (load_models(..., features=False))")
        return part


def load_models(settings: TrackSettings, *, features: bool = True, sam: bool = True) -> Models:
    """The models ``settings`` asks for, loaded once, on its device and dtype (resolved here,
    once): the feature models when ``features`` (the diffusion model, compiled with
    ``--compile``, and/or the DINO ViT) and SAM when ``sam``. The feature cache folder and the
    SAM checkpoint are checked first, so that a bad one fails before the big load."""
    check_feature_cache(settings)
    device = resolve_device(settings.runtime.device)
    dtype = resolve_dtype(settings.runtime.dtype, device)
    refiner = _load_refiner(settings, device, dtype) if sam else None
    parts = vit = None
    source = settings.source
    if features and source.kind in ("dinov2", "dinov3"):
        model, parameter = (source.dinov2_model, "dinov2_model") if source.kind == "dinov2" else (source.dinov3_model, "dinov3_model")
        vit = load_vit(model, device, dtype, parameter)
    if features and (source.kind in ("pdm", "dift") or source.instance_prior == "pdm"):
        parts = load_diffusion_parts(settings.features, device, dtype)
        if settings.runtime.compile:
            compile_unet(parts.unet, resolve_block(parts.unet, settings.features.layer))
    return Models(settings, device, dtype, parts, vit, refiner)


def _load_refiner(settings: TrackSettings, device: torch.device, dtype: torch.dtype) -> SamRefiner | None:
    """SAM as ``settings.sam`` asks (None for ``--sam none``); checkpoints cache beside features."""
    cache_dir = settings.runtime.cache_dir
    return load_sam(settings.sam, device, cache_dir / "sam" if cache_dir else default_sam_dir(), dtype)


def check_feature_cache(settings: TrackSettings) -> None:
    """InputError now (before any model loads) when the feature cache folder cannot be used:
    not creatable or writable, its disk full, or a bad bound."""
    runtime = settings.runtime
    if runtime.use_cache:
        CacheFolder(runtime.cache_dir, resolve_max_bytes(runtime.cache_max_gb)).check()
