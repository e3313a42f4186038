"""A tiny random-weight DINOv2 folder (transformers ``save_pretrained``), built offline."""

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
