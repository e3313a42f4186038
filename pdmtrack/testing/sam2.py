"""A tiny random-weight SAM 2 (transformers' ``Sam2Model``), saved as a transformers folder.

``--sam sam2.1-hiera-tiny --sam-checkpoint FOLDER`` loads it through the same code path as a
user's local SAM 2.1 folder. It is built from transformers' own config classes (nothing is
downloaded); its encoder sees 128x128 inputs (an 8x8 image embedding, 32x32 mask input), so a
frame costs a few milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

HIDDEN = 32


def tiny_sam2_config():  # -> transformers.Sam2Config
    """The tiny SAM 2 architecture: a 4-stage Hiera (5 blocks), a 3-level FPN, a 1-layer decoder."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2PromptEncoderConfig, Sam2VisionConfig

    backbone = Sam2HieraDetConfig(
        hidden_size=8,
        image_size=[128, 128],
        blocks_per_stage=[1, 1, 2, 1],  # a stage's first block pools, so the global one is not first
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 2, 2],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        fpn_hidden_size=HIDDEN,
    )
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=HIDDEN, image_size=128, patch_size=16, mask_input_channels=8),
        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=HIDDEN, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )


def build_tiny_sam2(folder: Path, seed: int = 0, config=None) -> Path:
    """Build the tiny SAM 2 (or one of ``config``, a ``Sam2Config``) with weights drawn from
    ``seed`` and save it (safetensors) in ``folder``."""
    from transformers import Sam2Model

    torch.manual_seed(seed)
    model = Sam2Model(config or tiny_sam2_config()).eval()
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
