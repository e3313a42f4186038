"""--compile: every top-level UNet block but the hooked one is compiled; results agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pdmtrack.config import TrackSettings
from pdmtrack.features.compile import compile_unet
from pdmtrack.features.extractor import FeatureExtractor
from pdmtrack.features.hooks import default_block
from pdmtrack.tracking.models import load_models


def test_the_hooked_block_stays_eager(tiny_sdxl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[int] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **options: compiled.append(id(self)))
    settings = TrackSettings.from_options(model=str(tiny_sdxl), device="cpu", compile=True)
    unet = load_models(settings, sam=False).parts.unet
    hooked = default_block(unet)
    assert hooked.startswith("up_blocks.1.")
    expected = [unet.down_blocks[i] for i in range(3)] + [unet.up_blocks[0], unet.up_blocks[2], unet.mid_block]
    assert sorted(compiled) == sorted(id(block) for block in expected)
    assert compile_unet(unet, "mid_block.attentions.0.transformer_blocks.0")[-1] == "up_blocks.2"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compiling on a CPU takes minutes)")
def test_compiled_features_agree_with_eager(tiny_sdxl: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (2, 48, 64, 3), dtype=np.uint8)
    features = {}
    for compile_ in (False, True):
        settings = TrackSettings.from_options(model=str(tiny_sdxl), device="cuda", size=64, compile=compile_)
        parts = load_models(settings, sam=False).parts
        features[compile_] = FeatureExtractor(parts, settings.features, ["dog"])(frames)
    torch.testing.assert_close(features[True].appearance, features[False].appearance, atol=2e-2, rtol=2e-2)
