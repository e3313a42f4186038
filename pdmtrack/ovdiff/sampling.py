"""Support images for one class name, sampled with the loaded diffusion model.

Deterministic DDIM (eta = 0) on the trailing schedule of ``steps`` steps (SDXL-turbo's own
schedule: 1 step is t = 999, 4 steps are 999, 749, 499, 249), no classifier-free guidance:
the UNet sees the support prompt only. The initial noise of image i is the i-th draw of a CPU
generator seeded with ``seed``, so the set does not depend on the batch size or the device;
``--batch-size auto`` is resolved by ``resolve_batch_size``, probed with one sampling step.
While sampling, the class token's cross-attention at the feature block is captured with the
same attention processors the feature extractor swaps in, and averaged over the steps: it
says where the class is in each generated image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pdmtrack.features.batch_size import resolve_batch_size
from pdmtrack.features.extractor import FeatureExtractor
from pdmtrack.features.hooks import capture_block
from pdmtrack.features.inversion import ddim_step, trailing_timesteps


@dataclass
class SupportSet:
    """Generated images of one class and where its name attended in each.

    images: (N, S, S, 3) uint8 RGB; attention: (N, h, w) float32, the class token's
    cross-attention at the feature block (softmax over prompt tokens, heads averaged).
    """

    images: np.ndarray
    attention: torch.Tensor


def sample_support(prompter: FeatureExtractor, count: int, size: int, steps: int, seed: int, batch_size: int | str) -> SupportSet:
    """``count`` support images of ``size`` x ``size`` pixels for the one class ``prompter``
    names, ``batch_size`` (or "auto") at a time."""
    if len(prompter.class_tokens) != 1:
        raise ValueError("the prompter must name exactly one class")
    parts = prompter.parts
    factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    latent_shape = (parts.unet.config.in_channels, size // factor, size // factor)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    timesteps = trailing_timesteps(len(parts.alphas_cumprod), steps)[::-1]

    def probe(frames: np.ndarray) -> object:  # one sampling step of len(frames) images: auto's memory probe
        return _sample_batch(prompter, torch.zeros((len(frames), *latent_shape)), timesteps[:1], size)

    batch_size = resolve_batch_size(batch_size, prompter.device, probe, (size, size))
    images, attention = [], []
    for start in range(0, count, batch_size):
        batch = min(batch_size, count - start)
        noise = torch.stack([torch.randn(latent_shape, generator=generator) for _ in range(batch)])
        batch_images, batch_attention = _sample_batch(prompter, noise, timesteps, size)
        images.append(batch_images)
        attention.append(batch_attention)
    return SupportSet(np.concatenate(images), torch.cat(attention))


@torch.inference_mode()
def _sample_batch(prompter: FeatureExtractor, noise: torch.Tensor, timesteps: list[int], size: int) -> tuple[np.ndarray, torch.Tensor]:
    """Denoise ``noise`` along ``timesteps`` (descending); decoded images and mean attention."""
    parts = prompter.parts
    alphas = parts.alphas_cumprod
    predict = prompter.predict_noise(size, size, len(noise))
    latents = noise.to(prompter.device, torch.float32)
    attention = torch.zeros(())
    for index, t in enumerate(timesteps):
        with capture_block(parts.unet, prompter.block, prompter.class_tokens) as capture:
            eps = predict(latents, t)
        maps = prompter.to_features(capture, tuple(latents.shape[-2:])).class_attention
        attention = attention + maps[:, 0].float()
        alpha_next = float(alphas[timesteps[index + 1]]) if index + 1 < len(timesteps) else 1.0
        latents = ddim_step(latents, eps, float(alphas[t]), alpha_next)
    return _decode(prompter, latents), attention / len(timesteps)


def _decode(prompter: FeatureExtractor, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents (B, C, h, w) -> uint8 RGB images (B, H, W, 3)."""
    vae = prompter.parts.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    pixels = vae.decode((latents / vae.config.scaling_factor + shift).to(vae.dtype)).sample.float()
    pixels = ((pixels.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()
