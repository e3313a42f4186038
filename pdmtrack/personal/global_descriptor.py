"""Global image descriptors for the first retrieval stage: a transformers ViT (DINOv2 by
default), pooled to one L2-normalised vector per image.

Pooling: ``gem`` (generalised mean, p = 3, over the patch tokens clamped at 1e-6, as in
retrieval practice) or ``cls`` (the class token). Images keep their aspect ratio (short side
``size``, sides multiples of the patch) and are embedded one by one, so any size works.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch.nn.functional as F

from pdmtrack.config import GlobalConfig
from pdmtrack.device import resolve_device, resolve_dtype
from pdmtrack.features.dino import VitParts, load_vit, vit_input, vit_tokens

_GEM_EPS = 1e-6


class GlobalDescriptor:
    """Images -> (N, D) float32 unit vectors with a loaded ViT."""

    def __init__(self, config: GlobalConfig, device: str = "auto", dtype: str = "auto") -> None:
        torch_device = resolve_device(device)
        self.config = config
        self.parts: VitParts = load_vit(config.model, torch_device, resolve_dtype(dtype, torch_device), "global_model")

    @property
    def record(self) -> dict:
        """What identifies these descriptors: the settings and the weights' fingerprint."""
        return {**asdict(self.config), "fingerprint": self.parts.fingerprint}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """One (H, W, 3) uint8 RGB image -> its (D,) unit descriptor."""
        tokens = vit_tokens(self.parts, vit_input(self.parts, image[None], self.config.size)).float()
        if self.config.pooling == "cls":
            vector = tokens[0, 0]
        else:
            patches = tokens[0, self.parts.prefix_tokens :].clamp(min=_GEM_EPS)
            vector = patches.pow(self.config.gem_p).mean(dim=0).pow(1.0 / self.config.gem_p)
        return F.normalize(vector, dim=0).cpu().numpy().astype(np.float32)
