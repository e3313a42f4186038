"""Attention hooks: which block, what is captured (checked against the module's own
projections), the shapes per model family, and clean removal even when a pass fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pdmtrack.config import FeatureConfig
from pdmtrack.errors import InputError
from pdmtrack.features.extractor import FeatureExtractor
from pdmtrack.features.hooks import attention_blocks, capture_block, default_block, resolve_block
from pdmtrack.features.model import DiffusionParts, load_diffusion_parts
from pdmtrack.testing.diffusion import build_tiny_pipeline

CPU = torch.device("cpu")
SIZE = 64
FRAMES = np.random.default_rng(0).integers(0, 256, size=(2, 64, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def sdxl_parts(tiny_sdxl: Path) -> DiffusionParts:
    return load_diffusion_parts(FeatureConfig(model=str(tiny_sdxl)), CPU, torch.float32)


@pytest.fixture(scope="module")
def sd_parts(tmp_path_factory: pytest.TempPathFactory) -> DiffusionParts:
    folder = build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"), family="sd")
    return load_diffusion_parts(FeatureConfig(model=str(folder)), CPU, torch.float32)


def expected_grid(parts: DiffusionParts, block: str, input_size: tuple[int, int]) -> tuple[int, int]:
    """The block's grid from the configs: VAE downsampling, then the UNet's up-block level."""
    vae_factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    levels = len(parts.unet.config.block_out_channels)
    up_index = int(block.split(".")[1])
    factor = vae_factor * 2 ** (levels - 1 - up_index)
    return input_size[0] // factor, input_size[1] // factor


@pytest.mark.parametrize(
    ("family", "design_name"),
    [("sdxl", "up_blocks.1.attentions.2.transformer_blocks.1"), ("sd", "up_blocks.3.attentions.2.transformer_blocks.0")],
)
def test_hooked_shapes_per_family(family: str, design_name: str, request: pytest.FixtureRequest) -> None:
    parts: DiffusionParts = request.getfixturevalue(f"{family}_parts")
    block = default_block(parts.unet)
    assert block == design_name  # the tiny models mirror the real block layouts
    module = parts.unet.get_submodule(block)
    extractor = FeatureExtractor(parts, FeatureConfig(model="tiny", size=SIZE, inversion="noise"), ["dog", "cat"])
    features = extractor(FRAMES)

    grid = expected_grid(parts, block, extractor.input_size(*FRAMES.shape[1:3]))
    assert features.appearance.shape == (2, module.attn1.to_q.out_features, *grid)
    assert features.semantic.shape == (2, module.attn2.to_q.out_features, *grid)
    assert features.class_vectors.shape == (2, module.attn2.to_k.out_features)
    assert features.class_attention.shape == (2, 2, *grid)
    for tensor in (features.appearance, features.semantic, features.class_vectors, features.class_attention):
        assert tensor.dtype == torch.float16 and tensor.device.type == "cpu"


def test_captures_equal_the_modules_own_projections(sdxl_parts: DiffusionParts) -> None:
    """Recompute every captured tensor from the inputs attn1/attn2 received in the feature pass."""
    names = ["hotdog", "cat"]
    extractor = FeatureExtractor(sdxl_parts, FeatureConfig(model="tiny", size=SIZE, inversion="aidi"), names)
    module = sdxl_parts.unet.get_submodule(extractor.block)
    seen: dict[str, tuple] = {}

    def keep_input(name: str):
        def hook(_module, args, kwargs):  # the last call is the feature pass
            seen[name] = (args[0] if args else kwargs["hidden_states"], kwargs.get("encoder_hidden_states"))

        return hook

    handles = [module.attn1.register_forward_pre_hook(keep_input("attn1"), with_kwargs=True)]
    handles.append(module.attn2.register_forward_pre_hook(keep_input("attn2"), with_kwargs=True))
    try:
        features = extractor(FRAMES)
    finally:
        for handle in handles:
            handle.remove()

    grid = features.grid
    with torch.no_grad():
        x1 = seen["attn1"][0]
        x2, context = seen["attn2"]
        appearance = (module.attn1.to_q(x1) + module.attn1.to_k(x1)) / 2
        semantic = module.attn2.to_q(x2)
        keys = module.attn2.to_k(context)
        heads = module.attn2.heads
        q = semantic.unflatten(-1, (heads, -1)).transpose(1, 2)
        k = keys.unflatten(-1, (heads, -1)).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1).mean(dim=1)  # (B, N, T)

    def as_map(tokens_last: torch.Tensor) -> torch.Tensor:
        return tokens_last.transpose(1, 2).reshape(tokens_last.shape[0], -1, *grid)

    tokens = extractor.class_tokens
    assert len(tokens[0]) == 2 and len(tokens[1]) == 1  # "hotdog" is two tokens, "cat" one
    expected_vectors = torch.stack([keys[0, positions].mean(0) for positions in tokens])
    expected_attention = torch.stack([probs[:, :, positions].mean(-1) for positions in tokens], dim=1)
    close = {"rtol": 1e-2, "atol": 2e-3}  # features are stored as float16
    torch.testing.assert_close(features.appearance.float(), as_map(appearance), **close)
    torch.testing.assert_close(features.semantic.float(), as_map(semantic), **close)
    torch.testing.assert_close(features.class_vectors.float(), expected_vectors, **close)
    torch.testing.assert_close(features.class_attention.float(), expected_attention.reshape(2, 2, *grid), **close)


def test_processors_compute_the_normal_attention_output(sdxl_parts: DiffusionParts) -> None:
    unet = sdxl_parts.unet
    block = default_block(unet)
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]])
    added = {"text_embeds": torch.randn(1, 32, generator=generator), "time_ids": time_ids}
    with torch.no_grad():
        plain = unet(latents, 10, encoder_hidden_states=context, added_cond_kwargs=added).sample
        with capture_block(unet, block, [[3], [5, 6]]) as capture:
            hooked = unet(latents, 10, encoder_hidden_states=context, added_cond_kwargs=added).sample
    torch.testing.assert_close(hooked, plain, rtol=1e-4, atol=1e-5)
    assert capture.appearance is not None and capture.class_attention.shape == (1, 16, 2)


def test_processors_restored_after_an_exception_in_the_pass(sdxl_parts: DiffusionParts) -> None:
    module = sdxl_parts.unet.get_submodule(default_block(sdxl_parts.unet))
    before = (module.attn1.processor, module.attn2.processor)

    def fail(*_args) -> None:
        raise RuntimeError("boom")

    failing = module.ff.register_forward_pre_hook(fail)  # runs inside the block, after attn1/attn2
    try:
        extractor = FeatureExtractor(sdxl_parts, FeatureConfig(model="tiny", size=SIZE, inversion="noise"), ["dog"])
        with pytest.raises(RuntimeError, match="boom"):
            extractor(FRAMES)
    finally:
        failing.remove()
    assert (module.attn1.processor, module.attn2.processor) == before
    assert not module._forward_hooks  # the stop-after hook is gone too
    assert extractor(FRAMES).appearance.shape[0] == 2  # and the model still works


def test_wrong_layer_lists_the_valid_blocks(sdxl_parts: DiffusionParts) -> None:
    valid = attention_blocks(sdxl_parts.unet)
    with pytest.raises(InputError) as err:
        resolve_block(sdxl_parts.unet, "up_blocks.9.attentions.0")
    message = str(err.value)
    assert message.startswith("layer: 'up_blocks.9.attentions.0'") and "\n" not in message
    assert message.endswith("valid blocks: " + ", ".join(valid))
    assert resolve_block(sdxl_parts.unet, valid[0]) == valid[0]
    assert resolve_block(sdxl_parts.unet, None) == default_block(sdxl_parts.unet)


def test_other_layer_is_hooked(sdxl_parts: DiffusionParts) -> None:
    first = attention_blocks(sdxl_parts.unet)[0]  # a down-block: coarser grid than the default
    module = sdxl_parts.unet.get_submodule(first)
    extractor = FeatureExtractor(sdxl_parts, FeatureConfig(model="tiny", size=SIZE, inversion="noise", layer=first))
    features = extractor(FRAMES[:1])
    assert features.appearance.shape[1] == module.attn1.to_q.out_features
    assert features.class_vectors is None and features.class_attention is None
