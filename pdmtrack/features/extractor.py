"""Frames -> PDM features: resize, VAE-encode, invert, one hooked UNet pass, all batched.

The prompt is fixed for an extractor (its text embeddings are computed once): empty without
class names, ``prompt_template`` with the name, or with several names joined by " and a "
("a photo of a dog and a cat"). Each name's prompt tokens are found through the tokenizer's
character offsets, so multi-token names work (their tokens are averaged by the hooks).
Features leave as contiguous float16 on the CPU: cached and fresh runs then agree exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.config import FeatureConfig, split_prompt_template
from pdmtrack.errors import ParameterError
from pdmtrack.features.hooks import BlockCapture, capture_block, resolve_block
from pdmtrack.features.inversion import check_inversion_config, invert
from pdmtrack.features.model import DiffusionParts
from pdmtrack.features.types import PDMFeatures

FEATURES_VERSION = 1  # bump when the computation changes, so cached features are not reused
_NAME_JOIN = " and a "
_SIZE_MULTIPLE = 64  # the UNet's three downsamplings of the 8x-downsampled latent


def build_prompt(template: str, class_names: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The prompt for ``class_names`` and each name's (start, end) character span in it.

    A template without ``{cls}`` (the authors' code: "A photo") is the prompt as it is, for any
    names: it locates no class token, so the features carry no class vectors.
    """
    if not class_names:
        return "", []
    if "{cls}" not in template:
        return template, []
    prefix, suffix = split_prompt_template("prompt_template", template)
    spans, pieces, cursor = [], [], len(prefix)
    for index, name in enumerate(class_names):
        if index:
            pieces.append(_NAME_JOIN)
            cursor += len(_NAME_JOIN)
        pieces.append(name)
        spans.append((cursor, cursor + len(name)))
        cursor += len(name)
    return prefix + "".join(pieces) + suffix, spans


def name_token_positions(tokenizer, prompt: str, spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Token positions (in the padded prompt) covering each character span."""
    offsets = _tokenize(tokenizer, prompt, return_offsets_mapping=True)["offset_mapping"]
    positions = []
    for start, end in spans:
        tokens = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
        if not tokens or offsets[tokens[-1]][1] < end:
            problem = f"'{prompt[start:end]}' does not fit in the prompt ({tokenizer.model_max_length} tokens)"
            raise ParameterError("classes", problem)
        positions.append(tokens)
    return positions


def _tokenize(tokenizer, prompt: str, **options):
    """The prompt padded (or truncated) to the tokenizer's full length, as SD pipelines do."""
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, **options)


def token_grid(tokens: int, latent_size: tuple[int, int], block: str) -> tuple[int, int]:
    """(h, w) of the grid that ``tokens`` tokens at ``block`` form over a latent of ``latent_size``."""
    stride = round(math.sqrt(latent_size[0] * latent_size[1] / tokens))
    grid = (latent_size[0] // stride, latent_size[1] // stride)
    if grid[0] * grid[1] != tokens:
        raise RuntimeError(f"{tokens} tokens at {block} do not form a grid of latent {tuple(latent_size)}")
    return grid


def distinct_names(names: Iterable[str]) -> list[str]:
    """The distinct class names, stripped, in order of first appearance: the order of the
    prompt's class tokens and of the features' class-vector rows."""
    return list(dict.fromkeys(name.strip() for name in names))


class FeatureExtractor:
    """PDM feature source over a loaded checkpoint (implements ``FeatureSource``)."""

    def __init__(
        self,
        parts: DiffusionParts,
        config: FeatureConfig,
        class_names: Sequence[str] = (),
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.parts = parts
        self.config = config
        self.device = device or parts.unet.device
        self.dtype = dtype or parts.unet.dtype
        check_inversion_config(config, len(parts.alphas_cumprod))
        self.block = resolve_block(parts.unet, config.layer)
        self.class_names = distinct_names(class_names)
        if any(not name for name in self.class_names):
            raise ParameterError("classes", "a class name is empty")
        self.prompt, spans = build_prompt(config.prompt_template, self.class_names)
        positions = [name_token_positions(tok, self.prompt, spans) for tok in parts.tokenizers]
        if any(p != positions[0] for p in positions):
            raise ParameterError("model", "its tokenizers split the prompt differently; cannot locate the class tokens")
        self.class_tokens = positions[0]
        self.prompt_embeds, self.pooled_embeds = self._encode_prompt()
        self.fingerprint = hashlib.sha256(json.dumps(self._identity(), sort_keys=True).encode()).hexdigest()

    def _identity(self) -> dict:
        """What the features depend on: weights, block, every feature setting, class names, dtype."""
        settings = {k: v for k, v in asdict(self.config).items() if k not in ("model", "revision", "layer")}
        return {
            "version": FEATURES_VERSION,
            "weights": self.parts.fingerprint,
            "block": self.block,
            "settings": settings,
            "classes": self.class_names,
            "dtype": str(self.dtype),
        }

    @property
    def description(self) -> dict:
        """The fingerprint's inputs plus the model as given (``--model``, ``--revision``), for
        ``pdmtrack cache info``; a local folder as an absolute path."""
        model = self.config.model
        local = Path(model).expanduser()
        return {**self._identity(), "model": str(local.resolve()) if local.is_dir() else model, "revision": self.config.revision}

    @torch.inference_mode()
    def _encode_prompt(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt embeddings (1, T, D), pooled embedding (1, P) for SDXL else None)."""
        if self.parts.family == "sd":
            ids = _tokenize(self.parts.tokenizers[0], self.prompt, return_tensors="pt").input_ids.to(self.device)
            return self.parts.text_encoders[0](ids).last_hidden_state.to(self.dtype), None
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.parts.tokenizers, self.parts.text_encoders):
            ids = _tokenize(tokenizer, self.prompt, return_tensors="pt").input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # SDXL conditions on the penultimate layer
            pooled = out[0]  # the projected pooled output of the last (bigger) encoder
        return torch.cat(hidden, dim=-1).to(self.dtype), pooled.to(self.dtype)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Model input (H, W): short side ``size``, long side the nearest multiple of 64."""
        size = self.config.size
        if self.config.square:
            return size, size
        exact_long = max(height, width) * size / min(height, width)
        long_side = max(_SIZE_MULTIPLE, round(exact_long / _SIZE_MULTIPLE) * _SIZE_MULTIPLE)
        return (size, long_side) if height <= width else (long_side, size)

    def predict_noise(self, height: int, width: int, batch: int):
        """The UNet as eps(z, t) for a batch of ``batch`` inputs of pixel size (height, width)."""
        unet = self.parts.unet
        context = self.prompt_embeds.expand(batch, -1, -1)
        added = None
        if self.parts.family == "sdxl":
            time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=self.device, dtype=self.dtype)
            added = {"text_embeds": self.pooled_embeds.expand(batch, -1), "time_ids": time_ids.expand(batch, -1)}
        alphas = self.parts.alphas_cumprod

        def predict(latents: torch.Tensor, timestep: int) -> torch.Tensor:
            t = torch.tensor(timestep, device=self.device)
            out = unet(latents.to(self.dtype), t, encoder_hidden_states=context, added_cond_kwargs=added)
            out = out.sample.float()
            if self.parts.prediction_type == "v_prediction":
                alpha = float(alphas[timestep])
                return alpha**0.5 * out + (1 - alpha) ** 0.5 * latents.float()
            return out

        return predict

    @torch.inference_mode()
    def encode_frames(self, frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> scaled VAE latent means (B, C, h, w), float32."""
        vae = self.parts.vae
        pixels = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device.type == "cuda":  # page-locked: the copy does not block the host
            pixels = pixels.pin_memory()
        pixels = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
        pixels = (pixels / 127.5 - 1.0).clamp(-1.0, 1.0)
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mean.float()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * vae.config.scaling_factor

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        """frames (B, H, W, 3) uint8 RGB -> PDMFeatures (float16, CPU) of the whole batch."""
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be a (B, H, W, 3) uint8 array, got {getattr(frames, 'shape', type(frames))}")
        height, width = self.input_size(*frames.shape[1:3])
        latents = self.encode_frames(frames, (height, width))
        predict = self.predict_noise(height, width, len(frames))
        noisy = invert(latents, predict, self.parts.alphas_cumprod, self.config)
        keep_qk = self.config.separate_qk
        with capture_block(self.parts.unet, self.block, self.class_tokens, stop_after=True, keep_qk=keep_qk) as capture:
            predict(noisy, self.config.feature_timestep)
        return self.to_features(capture, latents.shape[-2:])

    def to_features(self, capture: BlockCapture, latent_size: tuple[int, int]) -> PDMFeatures:
        """Tokens-last captures -> channel-first maps on the block's grid, float16 on CPU."""
        grid = token_grid(capture.appearance.shape[1], latent_size, self.block)

        def as_map(tokens_last: torch.Tensor) -> torch.Tensor:  # (..., N, C) -> (..., C, h, w)
            spatial = tokens_last.transpose(-1, -2).reshape(*tokens_last.shape[:-2], tokens_last.shape[-1], *grid)
            # contiguous: a transposed view would make fresh and cached features differ in layout
            return spatial.to(device="cpu", dtype=torch.float16, memory_format=torch.contiguous_format)

        has_classes = bool(self.class_tokens)
        return PDMFeatures(
            appearance=as_map(capture.appearance),
            semantic=as_map(capture.semantic),
            class_vectors=capture.class_vectors.to(device="cpu", dtype=torch.float16) if has_classes else None,
            class_attention=as_map(capture.class_attention) if has_classes else None,
            appearance_parts=None if capture.appearance_parts is None else as_map(capture.appearance_parts),
        )
