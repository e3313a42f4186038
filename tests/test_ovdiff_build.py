"""Prototype building with the tiny random-weight models: sampling, fg/bg split, k-means, store."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdmtrack.config import TrackSettings
from pdmtrack.features.extractor import FeatureExtractor
from pdmtrack.ovdiff.config import PrototypeConfig
from pdmtrack.ovdiff.pipeline import prototype_builder
from pdmtrack.ovdiff.sampling import sample_support
from pdmtrack.tracking.models import Models, load_models

SMALL = PrototypeConfig(num_support=2, steps=1, support_size=64, parts=4, kmeans_iters=5)


def _settings(model: Path, cache: Path, **options: object) -> TrackSettings:
    return TrackSettings.from_options(model=str(model), size=64, inversion="noise", sam="none", batch_size=2, cache_dir=cache, **options)


@pytest.fixture(scope="module")
def sdxl_models(tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory) -> Models:
    return load_models(_settings(tiny_sdxl, tmp_path_factory.mktemp("cache")))


def test_sampling_is_deterministic_and_batch_independent(sdxl_models) -> None:
    models = sdxl_models
    parts, settings = models.parts, models.settings
    prompter = FeatureExtractor(parts, replace(settings.features, prompt_template="a good photo of a {cls}"), ["dog"])
    one = sample_support(prompter, 2, 64, 2, seed=5, batch_size=1)
    three = sample_support(prompter, 2, 64, 2, seed=5, batch_size=2)
    assert one.images.shape == (2, 64, 64, 3) and one.images.dtype == np.uint8
    assert np.abs(one.images.astype(int) - three.images).max() <= 2  # batched float rounding
    assert one.attention.shape[0] == 2 and torch.allclose(one.attention, three.attention, atol=1e-3)
    other = sample_support(prompter, 1, 64, 2, seed=6, batch_size=1)
    assert not np.array_equal(other.images[0], one.images[0])


def test_build_then_served_from_disk(sdxl_models, tmp_path: Path) -> None:
    models = sdxl_models
    support = tmp_path / "support"
    builder = prototype_builder(models, SMALL, tmp_path / "protos", support)
    built = builder.prototypes(["dog", "hot dog"])
    assert builder.report.built == ["dog", "hot dog"] and builder.report.support_images == 4
    dog = built[0]
    channels = dog.fg_class.shape[1]
    assert dog.fg_class.shape == (1, channels) and 1 <= len(dog.fg_instance) <= 2 and 1 <= len(dog.fg_part) <= 4
    assert torch.allclose(dog.foreground.norm(dim=1), torch.ones(len(dog.foreground)), atol=1e-4)
    images = sorted((support / "dog").glob("[0-9][0-9][0-9][0-9].png"))
    assert len(images) == 2 and Image.open(images[0]).size == (64, 64)
    assert Image.open(support / "dog" / "0000_mask.png").mode == "P"
    assert (support / "hot_dog").is_dir()

    again = prototype_builder(models, SMALL, tmp_path / "protos")
    loaded = again.prototypes(["dog"])
    assert again.report.loaded == ["dog"] and again.report.built == []
    assert torch.equal(loaded[0].fg_part, dog.fg_part)
    changed = prototype_builder(models, replace(SMALL, num_support=1), tmp_path / "protos")
    changed.prototypes(["dog"])
    assert changed.report.built == ["dog"]  # another setting is another entry
    rebuilt = prototype_builder(models, SMALL, tmp_path / "protos")
    rebuilt.prototypes(["dog"], rebuild=True)
    assert rebuilt.report.built == ["dog"]


def test_sam_refines_the_split(sdxl_models, tiny_sam: Path, tmp_path: Path) -> None:
    models = sdxl_models
    settings = replace(models.settings, sam=replace(models.settings.sam, model_type="vit_b", checkpoint=tiny_sam))
    with_sam = replace(models, settings=settings, refiner=load_models(settings, features=False).refiner)
    builder = prototype_builder(with_sam, SMALL, tmp_path / "protos")
    plain = prototype_builder(models, SMALL, tmp_path / "protos")
    assert builder.key("dog") != plain.key("dog")  # SAM is part of the key
    assert len(builder.prototypes(["dog"])[0].foreground) >= 2


def test_sd_family_samples_too(tmp_path: Path) -> None:
    from pdmtrack.testing.diffusion import build_tiny_pipeline

    model = build_tiny_pipeline(tmp_path / "tiny-sd", family="sd")
    settings = _settings(model, tmp_path / "cache")
    builder = prototype_builder(load_models(settings), replace(SMALL, num_support=1), tmp_path / "protos")
    assert len(builder.prototypes(["cat"])[0].fg_instance) >= 1
