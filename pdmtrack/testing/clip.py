"""A tiny random-weight CLIP (model + processor) saved like a hub folder, built offline.

``ClipFilter("<that folder>")`` loads it through the same code path as a user's ``--clip``;
its tokenizer is the tiny byte-level one of the tiny diffusion models, its images 32x32.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from pdmtrack.testing.diffusion import staged_folder, write_tiny_tokenizer

_IMAGE_SIZE = 32


def build_tiny_clip(path: Path, seed: int = 0) -> Path:
    """Write a tiny CLIPModel + CLIPProcessor folder at ``path`` (absent or empty); return it."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    with staged_folder(path) as staging:
        tokenizer = write_tiny_tokenizer(staging / "tokenizer", pad_token="<|endoftext|>")
        image_processor = CLIPImageProcessor(size={"shortest_edge": _IMAGE_SIZE}, crop_size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE})
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(staging)
        shutil.rmtree(staging / "tokenizer")
        text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "image_size": _IMAGE_SIZE, "patch_size": 8}  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
        model.save_pretrained(staging, safe_serialization=True)
    return Path(path)
