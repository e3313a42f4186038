"""DINOv2 and DINOv3 (any transformers ViT, and DINOv3's ConvNeXts) loaded once: patch tokens
as a dense feature source, and the parts the global descriptors of
``pdmtrack.personal.global_descriptor`` reuse.

``name`` is a Hugging Face hub id (config and safetensors weights fetched into the standard HF
cache; ``HF_HUB_OFFLINE=1`` reads the cache only; DINOv3's repositories are gated, so the first
download needs their licence accepted and a login) or a local folder written by
``save_pretrained``. Images are resized (bilinear, antialiased) so the short side is ``size``
and both sides are multiples of the patch size, then normalised with the folder's
``preprocessor_config.json`` mean/std (ImageNet's when absent).

A ViT's ``last_hidden_state`` is [CLS, registers, patches] after the final norm; DINOv3's
ConvNeXt gives [pooled, cells of its last stage], a grid of stride 32, which serves as its
"patch" size here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.errors import ParameterError
from pdmtrack.features.model import folder_hash
from pdmtrack.features.types import PDMFeatures
from pdmtrack.io.files import hub_offline, read_json

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_HUB_FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"]


@dataclass
class VitParts:
    """A loaded ViT and what is needed to feed it: normalisation, patch size, prefix tokens
    (CLS + registers) before the patch tokens, and a fingerprint of the weights."""

    model: torch.nn.Module
    mean: torch.Tensor  # (3, 1, 1)
    std: torch.Tensor
    patch: int
    prefix_tokens: int
    fingerprint: str
    device: torch.device
    dtype: torch.dtype


CONVNEXT_STRIDE = 32  # DINOv3 ConvNeXt: 4 (stem) x 2 x 2 x 2 (downsampling stages)


def _resolve(name: str, parameter: str) -> tuple[Path, str]:
    """(local folder, fingerprint) of a hub id or a folder, given as ``parameter``."""
    local = Path(name).expanduser()
    if local.is_dir():
        return local, f"local:{folder_hash(local)}"
    if name.startswith((".", "/", "~")) or local.is_file():
        raise ParameterError(parameter, f"'{name}' is not a model folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError

    offline = hub_offline()
    try:
        folder = Path(snapshot_download(name, allow_patterns=_HUB_FILES, local_files_only=offline))
    except GatedRepoError as err:
        problem = f"'{name}' is gated on the hub: accept its licence at https://huggingface.co/{name}, log in (hf auth login) and run again"
        raise ParameterError(parameter, problem + ", or pass a local folder") from err
    except Exception as err:  # noqa: BLE001 - not found, offline and not cached, no network
        if offline:
            problem = (
                f"'{name}' is not in the HF cache and HF_HUB_OFFLINE is set; download it once (hf download {name}) or pass a local folder"
            )
            raise ParameterError(parameter, problem) from err
        problem = f"'{name}' is neither a local folder nor a model in the HF cache or on the hub ({type(err).__name__})"
        raise ParameterError(parameter, problem + "; pass a local folder") from err
    return folder, f"hub:{name}@{folder.name}"


def _patch_size(config: object) -> int | None:
    """Pixels per feature cell: a ViT's patch size, DINOv3 ConvNeXt's stride (None: neither)."""
    if getattr(config, "model_type", "") == "dinov3_convnext":
        return CONVNEXT_STRIDE
    patch = getattr(config, "patch_size", None)
    return patch if isinstance(patch, int) else None


def load_vit(name: str | Path, device: torch.device, dtype: torch.dtype, parameter: str = "dinov2_model") -> VitParts:
    """Load a transformers ViT (DINOv2, DINOv3) or DINOv3 ConvNeXt (a hub id or a local folder,
    given as ``parameter``) from safetensors onto ``device``/``dtype``."""
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    name = str(name)
    folder, fingerprint = _resolve(name, parameter)
    if not (folder / "config.json").is_file():
        raise ParameterError(parameter, f"'{folder}' has no config.json (save the model with save_pretrained)")
    try:
        model = AutoModel.from_pretrained(folder, dtype=dtype, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ParameterError(parameter, f"cannot load '{name}' ({err})") from err
    config = model.config
    patch = _patch_size(config)
    if patch is None:
        raise ParameterError(parameter, f"'{name}' is not a ViT with a patch_size nor a DINOv3 ConvNeXt")
    processor = folder / "preprocessor_config.json"
    settings = read_json(processor) if processor.is_file() else {}
    mean = settings.get("image_mean", _IMAGENET_MEAN)  # type: ignore[union-attr]
    std = settings.get("image_std", _IMAGENET_STD)  # type: ignore[union-attr]
    return VitParts(
        model=model.to(device).eval().requires_grad_(False),
        mean=torch.tensor(mean, device=device).view(3, 1, 1),
        std=torch.tensor(std, device=device).view(3, 1, 1),
        patch=patch,
        prefix_tokens=1 + int(getattr(config, "num_register_tokens", 0) or 0),
        fingerprint=fingerprint,
        device=device,
        dtype=dtype,
    )


def vit_input(parts: VitParts, frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised (B, 3, H', W'): short side ``size``, sides multiples of the patch."""
    height, width = frames.shape[1:3]
    scale = size / min(height, width)
    target = tuple(max(parts.patch, round(side * scale / parts.patch) * parts.patch) for side in (height, width))
    pixels = torch.from_numpy(np.require(frames, requirements=["C", "W"])).to(parts.device).permute(0, 3, 1, 2).float()
    pixels = F.interpolate(pixels, size=target, mode="bilinear", antialias=True, align_corners=False)
    return ((pixels / 255.0 - parts.mean) / parts.std).to(parts.dtype)


@torch.inference_mode()
def vit_tokens(parts: VitParts, pixels: torch.Tensor) -> torch.Tensor:
    """The last layer's normalised tokens (B, prefix + h*w, C) of normalised pixels."""
    return parts.model(pixel_values=pixels).last_hidden_state


class DinoExtractor:
    """DINOv2 or DINOv3 patch tokens as a feature source (implements ``FeatureSource``).

    Appearance features are the last layer's normalised patch tokens on the patch grid (the
    class and register tokens dropped); DINO has no text side, so the semantic features are
    empty (zero channels) and there are no class vectors: matching with it is appearance-only.
    ``name`` (dinov2 or dinov3) names the source in the fingerprint and in errors about
    ``size`` (its option is ``<name>_size``). Features leave as float16 on the CPU.
    """

    def __init__(self, parts: VitParts, size: int, name: str = "dinov2") -> None:
        if size < parts.patch:
            raise ParameterError(f"{name}_size", f"must be at least the patch size {parts.patch}, got {size}")
        self.parts = parts
        self.size = size
        payload = {"source": name, "weights": parts.fingerprint, "size": size, "dtype": str(parts.dtype)}
        self.fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        self.description = payload  # for `pdmtrack cache info`

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        """frames (B, H, W, 3) uint8 RGB -> patch-token features (float16, CPU)."""
        pixels = vit_input(self.parts, frames, self.size)
        grid = (pixels.shape[-2] // self.parts.patch, pixels.shape[-1] // self.parts.patch)
        tokens = vit_tokens(self.parts, pixels)[:, self.parts.prefix_tokens :]
        appearance = tokens.transpose(1, 2).reshape(len(frames), -1, *grid).to(device="cpu", dtype=torch.float16)
        return PDMFeatures(appearance=appearance, semantic=appearance.new_zeros(len(frames), 0, *grid))
