"""Baseline feature sources (DIFT from the loaded diffusion parts, DINOv2 patch tokens) and
the factory that picks one from ``--features``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pdmtrack.config import FeatureConfig, RuntimeConfig, SamConfig, SourceConfig, TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.features.dift import DiftExtractor
from pdmtrack.features.dino import DinoExtractor, load_vit
from pdmtrack.testing.dino import build_tiny_dinov2
from pdmtrack.tracking.models import load_models

FRAMES = np.random.default_rng(0).integers(0, 256, (2, 60, 90, 3), dtype=np.uint8)


def settings_for(tiny: Path | str, tmp_path: Path, **source: object) -> TrackSettings:
    return TrackSettings(
        features=FeatureConfig(model=str(tiny), size=64),
        runtime=RuntimeConfig(device="cpu", cache_dir=tmp_path / "cache"),
        source=SourceConfig(**source),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_patch_tokens_on_the_patch_grid(tmp_path: Path, registers: int) -> None:
    folder = build_tiny_dinov2(tmp_path / "dino", registers=registers)
    parts = load_vit(str(folder), torch.device("cpu"), torch.float32)
    assert parts.prefix_tokens == 1 + registers and parts.patch == 14
    features = DinoExtractor(parts, size=56)(FRAMES)
    # short side 60 -> 56 (4 patches), long side 90 * 56/60 = 84 (6 patches)
    assert features.appearance.shape == (2, 32, 4, 6) and features.appearance.dtype == torch.float16
    assert features.semantic.shape == (2, 0, 4, 6) and features.class_vectors is None
    again = DinoExtractor(parts, size=56)(FRAMES[:1])
    torch.testing.assert_close(again.appearance[0], features.appearance[0], atol=1e-2, rtol=1e-2)


def test_dift_is_an_up_block_output_averaged_over_seeded_noise(tiny_sdxl: Path, tmp_path: Path) -> None:
    settings = settings_for(tiny_sdxl, tmp_path)
    parts = load_models(settings, sam=False).parts
    one = DiftExtractor(parts, settings.features, timestep=51, up_block=1, ensemble=1)
    two = DiftExtractor(parts, settings.features, timestep=51, up_block=1, ensemble=2)
    first, averaged = one(FRAMES), two(FRAMES)
    channels = parts.unet.up_blocks[1].resnets[-1].conv2.out_channels
    assert first.appearance.shape[:2] == (2, channels) and first.semantic.shape[1] == 0
    torch.testing.assert_close(one(FRAMES).appearance, first.appearance)  # seeded: deterministic
    assert not torch.equal(first.appearance, averaged.appearance)  # a second noise draw averaged in
    assert one.fingerprint != two.fingerprint
    late = DiftExtractor(parts, settings.features, timestep=261, up_block=1, ensemble=1)
    assert late.fingerprint != one.fingerprint and not torch.equal(late(FRAMES).appearance, first.appearance)
    with pytest.raises(InputError, match="^dift_up_block: "):
        DiftExtractor(parts, settings.features, up_block=len(parts.unet.up_blocks))


def test_factory_picks_the_source_and_caches_it(tiny_sdxl: Path, tiny_dinov2: Path, tmp_path: Path) -> None:
    dino_settings = settings_for(tiny_sdxl, tmp_path, kind="dinov2", dinov2_model=str(tiny_dinov2), dinov2_size=56)
    dino = load_models(dino_settings, sam=False).feature_source([])
    assert isinstance(dino.source, DinoExtractor)
    computed = dino(FRAMES)
    cached = dino(FRAMES)  # a zero-channel semantic tensor survives the cache
    assert (dino.misses, dino.hits) == (2, 2) and torch.equal(computed.appearance, cached.appearance)
    assert cached.semantic.shape == computed.semantic.shape
    settings = settings_for(tiny_sdxl, tmp_path, kind="dift", dift_ensemble=1)
    models = load_models(settings, sam=False)
    image_dift = models.feature_source(["dog"], task="image")
    video_dift = models.feature_source([], task="video")
    assert (image_dift.source.config.feature_timestep, image_dift.source.up_block) == (261, 1)
    assert (video_dift.source.config.feature_timestep, video_dift.source.up_block) == (51, 2)
    chosen = replace(
        models, settings=replace(settings, source=SourceConfig(kind="dift", dift_timestep=99, dift_up_block=0))
    ).feature_source([])
    assert (chosen.source.config.feature_timestep, chosen.source.up_block) == (99, 0)
    pdm = replace(models, settings=settings_for(tiny_sdxl, tmp_path)).feature_source(["dog"])
    assert pdm(FRAMES).class_vectors is not None


def test_flag_validation() -> None:
    with pytest.raises(InputError, match="^features: "):
        SourceConfig(kind="clip")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="^dift_timestep: "):
        SourceConfig(dift_timestep=1000)
    with pytest.raises(InputError, match="^dinov2_model: "):
        load_vit("./no/such/folder", torch.device("cpu"), torch.float32)
    with pytest.raises(InputError, match="^global_model: "):
        load_vit("nobody/no-such-model-offline", torch.device("cpu"), torch.float32, "global_model")


def test_tracker_loads_what_the_features_need(tiny_sdxl: Path, tiny_dinov2: Path, tmp_path: Path) -> None:
    from pdmtrack.tracking.tracker import Tracker

    dino = Tracker(
        replace(settings_for(tiny_sdxl, tmp_path, kind="dinov2", dinov2_model=str(tiny_dinov2), dinov2_size=56), sam=SamConfig("none"))
    )
    assert dino.parts is None and dino.vit is not None
    assert isinstance(dino.feature_source(["dog"]).source, DinoExtractor)
    dift = Tracker(replace(settings_for(tiny_sdxl, tmp_path, kind="dift", dift_ensemble=1), sam=SamConfig("none")))
    assert dift.vit is None and dift.parts is not None
    assert dift.feature_source().source.up_block == 2  # video: DIFT's DAVIS setting
    assert dift.feature_source(task="image").source.up_block == 1
