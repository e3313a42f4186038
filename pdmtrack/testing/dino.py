"""Tiny random-weight DINOv2 and DINOv3 folders (transformers ``save_pretrained``), built offline."""

from __future__ import annotations

from pathlib import Path


def build_tiny_dinov2(path: Path, seed: int = 0, registers: int = 0) -> Path:
    """Write a 2-layer, 32-channel DINOv2 (patch 14) to ``path``; it loads like a hub model."""
    import torch
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(seed)
    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 2, "patch_size": 14, "image_size": 56}
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    model.eval().save_pretrained(path)
    return Path(path)


def build_tiny_dinov3(path: Path, seed: int = 0, convnext: bool = False) -> Path:
    """Write a tiny DINOv3 to ``path``: a 2-layer, 32-channel ViT (patch 16, 4 registers, RoPE,
    as the released ones) or, with ``convnext``, a 4-stage ConvNeXt of 8-64 channels; it loads
    like a hub model."""
    import torch
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel, DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(seed)
    if convnext:
        model = DINOv3ConvNextModel(DINOv3ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]))
    else:
        config = DINOv3ViTConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=16,
            num_register_tokens=4,
            image_size=64,
        )
        model = DINOv3ViTModel(config)
    model.eval().save_pretrained(path)
    return Path(path)
