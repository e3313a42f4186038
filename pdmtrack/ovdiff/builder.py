"""Prototypes of class names: served from the store, or built and stored.

Building a class: sample its support images (``sampling``), split each into foreground and
background (``split``; SAM refines when enabled), extract the same PDM features targets get
(the empty prompt, every ``--size``/``--inversion``/... setting), and pool them into
prototypes (``prototypes``). With ``support_dir`` the support images and their foreground
masks are written there for inspection (only for classes built in this run).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pdmtrack.errors import ParameterError
from pdmtrack.features.batch_size import resolve_batch_size
from pdmtrack.features.extractor import FeatureExtractor
from pdmtrack.io.files import atomic_path
from pdmtrack.io.writers import write_palette_png
from pdmtrack.ovdiff.config import PrototypeConfig
from pdmtrack.ovdiff.prototypes import ClassPrototypes, build_class_prototypes, feature_maps
from pdmtrack.ovdiff.sampling import sample_support
from pdmtrack.ovdiff.split import foreground_masks, split_cells
from pdmtrack.ovdiff.store import PrototypeStore, entry_key
from pdmtrack.tracking.models import Models

PROTOTYPES_VERSION = 1  # bump when the computation changes, so stored prototypes are rebuilt


@dataclass
class BuildReport:
    """What ``PrototypeBuilder.prototypes`` did: classes built or loaded, and their cost."""

    built: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    class_seconds: dict[str, float] = field(default_factory=dict)  # per built class, all stages
    support_images: int = 0
    sampling_seconds: float = 0.0


class PrototypeBuilder:
    """Builds (or loads) class prototypes with loaded diffusion parts and an optional SAM."""

    def __init__(self, models: Models, config: PrototypeConfig, store: PrototypeStore, support_dir: Path | None = None) -> None:
        parts = models.parts
        if parts is None or store.model != parts.fingerprint:
            raise ValueError("the store belongs to another model than the loaded one")
        self.parts = parts
        self.settings = models.settings
        self.config = config
        self.store = store
        self.refiner = models.refiner
        self.support_dir = support_dir
        self.device, self.dtype = models.device, models.dtype
        self.extractor = FeatureExtractor(parts, self.settings.features, (), self.device, self.dtype)
        self.report = BuildReport()

    def key(self, name: str) -> str:
        """The store key of ``name``'s prototypes under the current settings."""
        sam = self.settings.sam
        payload = {
            "version": PROTOTYPES_VERSION,
            "features": self.extractor.fingerprint,  # weights, block, feature settings, dtype
            "class": name,
            "prompt": self.config.support_prompt.format(cls=name),
            "prototypes": asdict(self.config),
            "sam": None if self.refiner is None else [sam.model_type, str(sam.checkpoint), sam.min_iou],
        }
        return entry_key(payload)

    def prototypes(self, names: list[str], rebuild: bool = False) -> list[ClassPrototypes]:
        """Prototypes of every name, in order; stored ones are read unless ``rebuild`` (the
        store's folder must be writable before the first class is built)."""
        result = []
        for name in names:
            key = self.key(name)
            stored = None if rebuild else self.store.load(name, key)
            if stored is not None:
                self.report.loaded.append(name)
                result.append(stored)
                continue
            if not self.report.built:
                self.store.check_writable()
            began = time.perf_counter()
            built, record = self.build(name)
            self.store.save(name, key, built, record)
            self.report.class_seconds[name] = time.perf_counter() - began
            self.report.built.append(name)
            result.append(built)
        return result

    def build(self, name: str) -> tuple[ClassPrototypes, dict]:
        """Sample, split, extract and pool ``name``'s prototypes; (prototypes, build record)."""
        config, runtime = self.config, self.settings.runtime
        prompt_config = replace(self.settings.features, prompt_template=config.support_prompt)
        prompter = FeatureExtractor(self.parts, prompt_config, [name], self.device, self.dtype)
        tick = time.perf_counter()
        support = sample_support(prompter, config.num_support, config.support_size, config.steps, config.seed, runtime.batch_size)
        self.report.sampling_seconds += time.perf_counter() - tick
        self.report.support_images += len(support.images)
        masks = foreground_masks(support.images, support.attention, config.fg_threshold, self.refiner)
        batch = resolve_batch_size(runtime.batch_size, self.device, self.extractor, support.images.shape[1:3])
        maps = torch.cat(
            [feature_maps(self.extractor(support.images[i : i + batch]), config.feature) for i in range(0, len(support.images), batch)]
        )
        cells = split_cells(masks, tuple(maps.shape[-2:]), config.bg_max_fraction)
        if not bool(cells.foreground.any()):
            raise ParameterError("classes", f"'{name}': the class token's attention is flat on every support image")
        prototypes = build_class_prototypes(maps, cells, config.parts, config.kmeans_iters, config.seed)
        if self.support_dir is not None:
            _write_support(self.support_dir / _folder_name(name), support.images, masks)
        record = {
            "prompt": config.support_prompt.format(cls=name),
            "settings": asdict(config),
            "features": self.extractor.fingerprint,
            "support_images": len(support.images),
            "counts": {k: len(v) for k, v in prototypes.tensors().items()},
        }
        return prototypes, record


def _folder_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _write_support(folder: Path, images: np.ndarray, masks: np.ndarray) -> None:
    """``NNNN.png`` (support image) and ``NNNN_mask.png`` (foreground = 1, palette) per image."""
    for index, (image, mask) in enumerate(zip(images, masks)):
        with atomic_path(folder / f"{index:04d}.png") as tmp:
            Image.fromarray(image).save(tmp)
        write_palette_png(folder / f"{index:04d}_mask.png", mask.astype(np.uint8))
