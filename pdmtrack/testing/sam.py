"""A tiny random-weight SAM, saved as safetensors with its architecture in the metadata.

``load_sam(SamConfig(checkpoint=that_file))`` rebuilds it through the same code path a
user's ``--sam-checkpoint FILE`` takes. Its encoder sees 64x64 inputs (SamPredictor resizes
the long side to the encoder's ``img_size``), so a frame costs a few milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from pdmtrack.io.files import atomic_path
from pdmtrack.sam.loading import ARCHITECTURE_KEY, SamArchitecture, build_sam_model

TINY_SAM = SamArchitecture(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    img_size=64,
    patch_size=8,  # 8x8 image embedding, 32x32 mask input
    window_size=4,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_depth=1,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)


def build_tiny_sam(path: Path, seed: int = 0, arch: SamArchitecture = TINY_SAM) -> Path:
    """Build the tiny SAM (or ``arch``) with weights drawn from ``seed`` and save it to ``path``."""
    torch.manual_seed(seed)
    sam = build_sam_model(arch)
    state = {name: tensor.contiguous() for name, tensor in sam.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={ARCHITECTURE_KEY: arch.to_json()})
    return path
