"""SAM 2.1's image predictor (Hiera encoder) through transformers' ``Sam2Model``, as a
``SamBackend``: frames encoded in batches, every object of a frame decoded in one call.

Preprocessing is ``Sam2ImageProcessor``'s, done on the device: the frame squashed to the
encoder's square (bilinear, antialiased), scaled to [0, 1], normalised with ImageNet's mean
and std. Prompts are scaled to that square; masks come back as SAM 2's low-res logits
resized to the frame, thresholded at 0 (as ``Sam2ImagePredictor`` does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.device import autocast
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.io.files import hub_offline, read_json
from pdmtrack.sam.prompting import Decoded, ObjectPrompt
from pdmtrack.sam.refine import FrameEmbedding, FramePrompts
from pdmtrack.sam.vit import ENCODER_BATCH

# --sam value -> the Hugging Face hub id of its transformers weights.
SAM2_MODELS = {f"sam2.1-hiera-{size}": f"facebook/sam2.1-hiera-{size}" for size in ("tiny", "small", "base-plus", "large")}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class HieraBackend:
    """A ``transformers.Sam2Model`` on its device; ``dtype`` is the autocast precision on CUDA."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = dtype
        self.side = int(model.config.prompt_encoder_config.image_size)
        self.mask_input_size = int(model.prompt_encoder.mask_input_size[0])
        self._mean = torch.tensor(_IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(_IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, side, side) normalised float32 on the device."""
        pixels = torch.from_numpy(np.require(frames, requirements=["C", "W"]))  # a read-only frame is copied
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        pixels = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        square = F.interpolate(pixels, size=(self.side, self.side), mode="bilinear", align_corners=False, antialias=True)
        return (square / 255.0 - self._mean) / self._std

    @torch.inference_mode()
    def embed(self, frames: np.ndarray) -> list[FrameEmbedding]:
        """Encode (B, H, W, 3) uint8 frames, ``ENCODER_BATCH`` at a time."""
        frame_size = (int(frames.shape[1]), int(frames.shape[2]))
        square = (self.side, self.side)
        embeddings: list[FrameEmbedding] = []
        for start in range(0, len(frames), ENCODER_BATCH):
            with autocast(self.device, self.dtype):
                levels = self.model.get_image_embeddings(self.pixel_values(frames[start : start + ENCODER_BATCH]))
            embeddings += [FrameEmbedding(tuple(level[i] for level in levels), frame_size, square) for i in range(len(levels[0]))]
        return embeddings

    @torch.inference_mode()
    def predict(self, embedding: FrameEmbedding, prompts: FramePrompts) -> torch.Tensor:
        """(P, 3, H, W) bool masks of the P objects of ``prompts``, in one decoder call (each
        object is a batch item sharing the frame's embedding)."""
        count = len(prompts.boxes)
        scale = self._scale(embedding)
        points = prompts.points.to(self.device) * scale
        boxes = prompts.boxes.to(self.device) * scale.repeat(2)
        features = [level[None].expand(count, *level.shape) for level in embedding.features]
        with autocast(self.device, self.dtype):
            output = self.model(
                image_embeddings=features,
                input_points=points[:, None],
                input_labels=prompts.labels.to(self.device)[:, None],
                input_boxes=boxes[:, None],
                input_masks=self.mask_input(prompts.log_odds),
                multimask_output=True,
            )
        low_res = output.pred_masks[:, 0].float()  # (P, 3, side, side)
        return _to_frame(low_res, embedding) > 0

    @torch.inference_mode()
    def decode(self, embedding: FrameEmbedding, prompt: ObjectPrompt, mask_input: torch.Tensor | None, multimask: bool) -> Decoded:
        """One object's clicks and box, scaled to the encoder's square as ``Sam2Processor`` does."""
        scale = self._scale(embedding)
        inputs: dict[str, torch.Tensor] = {}
        if prompt.points:
            inputs["input_points"] = torch.tensor(prompt.points, dtype=torch.float, device=self.device).mul(scale)[None, None]
            inputs["input_labels"] = torch.tensor(prompt.labels, dtype=torch.long, device=self.device)[None, None]
        if prompt.box is not None:
            inputs["input_boxes"] = torch.tensor(prompt.box, dtype=torch.float, device=self.device).mul(scale.repeat(2))[None, None]
        if mask_input is not None:
            inputs["input_masks"] = mask_input.to(self.device, torch.float)[None]
        with autocast(self.device, self.dtype):
            output = self.model(image_embeddings=[level[None] for level in embedding.features], multimask_output=multimask, **inputs)
        low_res = output.pred_masks[0, 0].float()  # (C, side, side)
        return Decoded(_to_frame(low_res[None], embedding)[0] > 0, output.iou_scores[0, 0].float(), low_res)

    def mask_input(self, log_odds: torch.Tensor) -> torch.Tensor:
        """(P, H, W) log-odds -> the decoder's (P, 1, side, side) mask input (squashed, as the frame)."""
        side = self.mask_input_size
        return F.interpolate(log_odds[:, None].to(self.device).float(), size=(side, side), mode="bilinear", align_corners=False)

    def _scale(self, embedding: FrameEmbedding) -> torch.Tensor:
        """(x, y) factors from the frame's pixels to the encoder's square."""
        height, width = embedding.frame_size
        return torch.tensor([self.side / width, self.side / height], device=self.device)


def _to_frame(low_res: torch.Tensor, embedding: FrameEmbedding) -> torch.Tensor:
    """(P, C, side, side) low-res logits resized to the frame (as ``post_process_masks`` does)."""
    return F.interpolate(low_res, size=embedding.frame_size, mode="bilinear", align_corners=False)


def load_hiera_model(model_type: str, folder: Path | None, device: torch.device) -> torch.nn.Module:
    """``Sam2Model`` of ``model_type`` from a local transformers folder, else from the HF hub
    (cached like the diffusion model; offline, the cache only), weights straight to ``device``."""
    from transformers import Sam2Model

    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ParameterError("sam_checkpoint", f"{model_type} takes a transformers folder (config.json + safetensors), not {folder}")
        kind = read_json(folder / "config.json", "missing: not a transformers model folder")
        if not isinstance(kind, dict) or kind.get("model_type") != "sam2":
            raise InputError(
                folder / "config.json", f"not a SAM 2 model (model_type {kind.get('model_type') if isinstance(kind, dict) else None!r})"
            )
    source = str(folder) if folder is not None else SAM2_MODELS[model_type]
    options: dict = {"use_safetensors": True, "local_files_only": folder is not None or hub_offline()}
    if device.type == "cuda":
        options["device_map"] = {"": device}
    try:
        model = Sam2Model.from_pretrained(source, **options)
    except OSError as err:
        hint = "download it once, or pass a local folder with --sam-checkpoint DIR, or --sam none"
        raise ParameterError("sam", f"cannot load '{source}' ({str(err).splitlines()[0]}); {hint}") from err
    return model.to(device).eval().requires_grad_(False)
