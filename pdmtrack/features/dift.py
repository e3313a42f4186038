"""DIFT (Tang et al., NeurIPS 2023) from the same loaded diffusion parts: the output of one
UNet up-block after noising the clean latent to timestep t, averaged over an ensemble of
noise draws.

DIFT's published settings: t = 261 and up-block 1 for correspondence (SD 2.1), t = 51 and
up-block 2 for DAVIS propagation, ensemble 8, empty prompt. Differences from DIFT's code:
the latent is the VAE's mean (DIFT samples it) and the noise draws are seeded (seed, seed+1,
...), so features are deterministic and cacheable. DIFT has no semantic map: the semantic
features are empty (zero channels) and there are no class vectors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace

import numpy as np
import torch

from pdmtrack.config import FeatureConfig
from pdmtrack.errors import ParameterError
from pdmtrack.features.extractor import FeatureExtractor
from pdmtrack.features.inversion import invert
from pdmtrack.features.model import DiffusionParts
from pdmtrack.features.types import PDMFeatures

DIFT_CORRESPONDENCE_TIMESTEP = 261
DIFT_DAVIS_TIMESTEP = 51


class _BlockDone(Exception):
    """Raised by the hook once the up-block's output is captured (the rest is not computed)."""


class DiftExtractor:
    """DIFT features as a feature source (implements ``FeatureSource``); float16 on the CPU."""

    def __init__(
        self,
        parts: DiffusionParts,
        config: FeatureConfig,
        timestep: int = DIFT_CORRESPONDENCE_TIMESTEP,
        up_block: int = 1,
        ensemble: int = 8,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        blocks = len(parts.unet.up_blocks)
        if not 0 <= up_block < blocks:
            raise ParameterError("dift_up_block", f"must lie in 0..{blocks - 1} for this UNet, got {up_block}")
        if ensemble < 1:
            raise ParameterError("dift_ensemble", f"must be at least 1, got {ensemble}")
        self.config = replace(config, inversion="noise", feature_timestep=timestep)
        self.base = FeatureExtractor(parts, self.config, (), device, dtype)  # empty prompt, checks t
        self.up_block = up_block
        self.ensemble = ensemble
        payload = {
            "source": "dift",
            "weights": parts.fingerprint,
            "up_block": up_block,
            "ensemble": ensemble,
            "settings": {k: v for k, v in asdict(self.config).items() if k not in ("model", "revision", "layer")},
            "dtype": str(self.base.dtype),
        }
        self.fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        self.description = {**payload, "model": config.model}  # for `pdmtrack cache info`

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        """frames (B, H, W, 3) uint8 RGB -> up-block features (B, C, h, w)."""
        base = self.base
        height, width = base.input_size(*frames.shape[1:3])
        latents = base.encode_frames(frames, (height, width))
        predict = base.predict_noise(height, width, len(frames))
        block = base.parts.unet.up_blocks[self.up_block]
        outputs: list[torch.Tensor] = []

        def keep(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            outputs.append(output.float())
            raise _BlockDone

        handle = block.register_forward_hook(keep)
        try:
            for draw in range(self.ensemble):
                noisy = invert(latents, predict, base.parts.alphas_cumprod, replace(self.config, seed=self.config.seed + draw))
                try:
                    predict(noisy, self.config.feature_timestep)
                except _BlockDone:
                    pass
        finally:
            handle.remove()
        appearance = torch.stack(outputs).mean(dim=0).to(device="cpu", dtype=torch.float16)
        return PDMFeatures(appearance=appearance, semantic=appearance.new_zeros(len(frames), 0, *appearance.shape[-2:]))
