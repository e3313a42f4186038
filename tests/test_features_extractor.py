"""Feature extractor: prompt and class tokens, input size, batching, determinism, modes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pdmtrack.config import FeatureConfig
from pdmtrack.errors import InputError
from pdmtrack.features.extractor import FeatureExtractor, build_prompt
from pdmtrack.features.model import DiffusionParts, load_diffusion_parts
from pdmtrack.features.types import PDMFeatures
from pdmtrack.testing.diffusion import MULTI_TOKEN_WORD

CPU = torch.device("cpu")
CONFIG = FeatureConfig(model="tiny", size=64)  # the model comes from `parts`
FRAMES = np.random.default_rng(7).integers(0, 256, size=(8, 48, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def parts(tiny_sdxl: Path) -> DiffusionParts:
    return load_diffusion_parts(FeatureConfig(model=str(tiny_sdxl)), CPU, torch.float32)


def fields(features: PDMFeatures) -> list[torch.Tensor]:
    tensors = (features.appearance, features.semantic, features.class_vectors, features.class_attention)
    return [t for t in tensors if t is not None]


def test_prompt_joins_several_names() -> None:
    prompt, spans = build_prompt("a photo of a {cls}", ["dog", "cat"])
    assert prompt == "a photo of a dog and a cat"
    assert [prompt[s:e] for s, e in spans] == ["dog", "cat"]
    assert build_prompt("a photo of a {cls}", []) == ("", [])
    with pytest.raises(InputError, match="prompt_template"):
        build_prompt("a {cls} beside a {cls}", ["dog"])


@pytest.mark.parametrize("name", ["dog", MULTI_TOKEN_WORD, "zebra"])
def test_class_tokens_found(parts: DiffusionParts, name: str) -> None:
    extractor = FeatureExtractor(parts, CONFIG, [name])
    assert extractor.prompt == f"a photo of a {name}"
    (positions,) = extractor.class_tokens
    tokenizer = parts.tokenizers[0]
    ids = tokenizer(extractor.prompt).input_ids
    pieces = tokenizer.convert_ids_to_tokens([ids[i] for i in positions])
    assert "".join(pieces).replace("</w>", "") == name  # exactly the name's tokens
    expected_count = len(tokenizer.tokenize(name))
    assert len(positions) == expected_count
    assert (expected_count > 1) == (name != "dog")


def test_without_class_names_prompt_is_empty(parts: DiffusionParts) -> None:
    extractor = FeatureExtractor(parts, CONFIG)
    features = extractor(FRAMES[:1])
    assert extractor.prompt == "" and extractor.class_tokens == []
    assert features.class_vectors is None and features.class_attention is None


def test_repeated_names_count_once(parts: DiffusionParts) -> None:
    extractor = FeatureExtractor(parts, CONFIG, ["dog", "cat", "dog"])
    assert extractor.prompt == "a photo of a dog and a cat"
    assert extractor(FRAMES[:1]).class_vectors.shape[0] == 2


@pytest.mark.parametrize(("height", "width"), [(480, 854), (854, 480), (64, 64), (100, 333), (1080, 1920)])
def test_input_size_keeps_aspect(parts: DiffusionParts, height: int, width: int) -> None:
    size = 128
    extractor = FeatureExtractor(parts, replace(CONFIG, size=size))
    out_h, out_w = extractor.input_size(height, width)
    short, long_ = (out_h, out_w) if height <= width else (out_w, out_h)
    assert short == size and long_ % 64 == 0
    exact_long = max(height, width) * size / min(height, width)
    assert abs(long_ - exact_long) <= 32  # the nearest multiple of 64
    square = FeatureExtractor(parts, replace(CONFIG, size=size, square=True))
    assert square.input_size(height, width) == (size, size)


def test_size_must_be_a_multiple_of_64(parts: DiffusionParts) -> None:
    with pytest.raises(InputError, match="^size: "):
        FeatureExtractor(parts, replace(CONFIG, size=100))


@pytest.mark.parametrize("mode", ["aidi", "ddim", "noise", "ddim-reconstruct"])
def test_batch_of_one_equals_batch_of_eight(parts: DiffusionParts, mode: str) -> None:
    # ddim-reconstruct: 4 steps up and 3 down (1, 251, 501, 751); 20 of each through random
    # weights amplify batch-size rounding past any useful tolerance
    steps, timestep = (4, 1) if mode == "ddim-reconstruct" else (20, CONFIG.feature_timestep)
    extractor = FeatureExtractor(parts, replace(CONFIG, inversion=mode, ddim_steps=steps, feature_timestep=timestep), ["dog"])
    batched = extractor(FRAMES)
    for index in (0, 5):
        alone = extractor(FRAMES[index : index + 1])
        for left, right in zip(fields(batched.select(index)), fields(alone)):
            torch.testing.assert_close(left.float(), right.float(), rtol=1e-2, atol=2e-3)
    assert not torch.allclose(batched.appearance[0].float(), batched.appearance[1].float())


def test_query_and_key_kept_apart_on_request(parts: DiffusionParts) -> None:
    plain = FeatureExtractor(parts, CONFIG, ["dog"])(FRAMES[:2])
    kept = FeatureExtractor(parts, replace(CONFIG, separate_qk=True), ["dog"])(FRAMES[:2])
    assert plain.appearance_parts is None
    assert kept.appearance_parts is not None and kept.appearance_parts.shape == (2, 2, *kept.appearance.shape[1:])
    assert not torch.allclose(kept.appearance_parts[:, 0].float(), kept.appearance_parts[:, 1].float())
    mean = kept.appearance_parts.float().mean(dim=1)
    torch.testing.assert_close(mean, kept.appearance.float(), atol=2e-3, rtol=1e-2)
    assert torch.equal(kept.appearance, plain.appearance)


def test_template_without_class_slot_is_the_prompt(parts: DiffusionParts) -> None:
    """The authors' "A photo": the names do not enter the prompt, no class vectors."""
    assert build_prompt("A photo", ["dog"]) == ("A photo", [])
    extractor = FeatureExtractor(parts, replace(CONFIG, prompt_template="A photo"), ["dog"])
    assert extractor.prompt == "A photo" and extractor.class_tokens == []
    features = extractor(FRAMES[:1])
    assert features.class_vectors is None and features.class_attention is None


def test_same_frames_give_identical_features(parts: DiffusionParts) -> None:
    extractor = FeatureExtractor(parts, CONFIG, ["cat"])
    first, second = extractor(FRAMES[:3]), extractor(FRAMES[:3])
    assert all(torch.equal(a, b) for a, b in zip(fields(first), fields(second)))
    other = FeatureExtractor(parts, CONFIG, ["cat"])  # a fresh extractor too
    assert all(torch.equal(a, b) for a, b in zip(fields(first), fields(other(FRAMES[:3]))))


def test_inversion_modes_differ(parts: DiffusionParts) -> None:
    outputs = {
        mode: FeatureExtractor(parts, replace(CONFIG, inversion=mode, ddim_steps=20))(FRAMES[:1]) for mode in ("aidi", "ddim", "noise")
    }
    assert not torch.allclose(outputs["aidi"].appearance, outputs["noise"].appearance)
    assert not torch.allclose(outputs["aidi"].appearance, outputs["ddim"].appearance)


def test_fingerprint_tracks_every_setting(parts: DiffusionParts) -> None:
    base = FeatureExtractor(parts, CONFIG, ["dog"]).fingerprint
    assert FeatureExtractor(parts, CONFIG, ["dog"]).fingerprint == base
    changed = [
        FeatureExtractor(parts, replace(CONFIG, feature_timestep=499), ["dog"]),
        FeatureExtractor(parts, replace(CONFIG, fixed_point_iters=1), ["dog"]),
        FeatureExtractor(parts, replace(CONFIG, square=True), ["dog"]),
        FeatureExtractor(parts, replace(CONFIG, layer="up_blocks.1.attentions.2.transformer_blocks.0"), ["dog"]),
        FeatureExtractor(parts, CONFIG, ["cat"]),
        FeatureExtractor(parts, CONFIG, ["dog"], dtype=torch.float16),
    ]
    assert len({base, *(e.fingerprint for e in changed)}) == len(changed) + 1
    explicit_default = replace(CONFIG, layer="up_blocks.1.attentions.2.transformer_blocks.1")
    assert FeatureExtractor(parts, explicit_default, ["dog"]).fingerprint == base  # same block


def test_bad_frames_are_rejected(parts: DiffusionParts) -> None:
    extractor = FeatureExtractor(parts, CONFIG)
    with pytest.raises(ValueError, match="uint8"):
        extractor(FRAMES.astype(np.float32))


def test_real_davis_frames(parts: DiffusionParts, davis_mini: Path) -> None:
    from PIL import Image

    sequence = sorted((davis_mini / "JPEGImages" / "480p").iterdir())[0]
    paths = sorted(sequence.glob("*.jpg"))[:2]
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    extractor = FeatureExtractor(parts, CONFIG)
    features = extractor(frames)
    height, width = extractor.input_size(*frames.shape[1:3])
    assert (height, width) == (64, 128)  # 854x480 at short side 64
    assert features.grid == (height // 16, width // 16)
    assert bool(torch.isfinite(features.appearance.float()).all())
