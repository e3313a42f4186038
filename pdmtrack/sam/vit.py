"""segment-anything's ViT SAM (vit_b/l/h) as a ``SamBackend``: frames encoded in batches,
every object of a frame decoded in one call.

Preprocessing and postprocessing are ``SamPredictor``'s (long side resized to the encoder's
size with PIL, normalised, padded to a square; masks upscaled, cropped, resized back), so a
batch gives what ``SamPredictor.set_image`` + ``predict`` give object by object.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.device import autocast
from pdmtrack.sam.prompting import Decoded, ObjectPrompt
from pdmtrack.sam.refine import LOGIT_CLIP, FrameEmbedding, FramePrompts

ENCODER_BATCH = 8  # frames per image-encoder call (bounds activation memory)


class VitBackend:
    """``segment_anything.modeling.Sam`` on its device; ``dtype`` is the autocast precision on
    CUDA (fp32 weights)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = dtype
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.mask_input_size = int(model.prompt_encoder.mask_input_size[0])

    @torch.inference_mode()
    def embed(self, frames: np.ndarray) -> list[FrameEmbedding]:
        """Encode (B, H, W, 3) uint8 frames, ``ENCODER_BATCH`` at a time."""
        frame_size = (int(frames.shape[1]), int(frames.shape[2]))
        embeddings: list[FrameEmbedding] = []
        for start in range(0, len(frames), ENCODER_BATCH):
            resized = np.stack([self.transform.apply_image(f) for f in frames[start : start + ENCODER_BATCH]])
            pixels = torch.from_numpy(resized)
            if self.device.type == "cuda":
                pixels = pixels.pin_memory()
            pixels = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            with autocast(self.device, self.dtype):
                encoded = self.model.image_encoder(self.model.preprocess(pixels.float()))
            input_size = (int(resized.shape[1]), int(resized.shape[2]))
            embeddings += [FrameEmbedding((e,), frame_size, input_size) for e in encoded]
        return embeddings

    @torch.inference_mode()
    def predict(self, embedding: FrameEmbedding, prompts: FramePrompts) -> torch.Tensor:
        """(P, 3, H, W) bool masks of the P objects of ``prompts``, in one decoder call."""
        (image,) = embedding.features
        frame_size = embedding.frame_size
        device = self.device
        points = self.transform.apply_coords_torch(prompts.points.to(device), frame_size)
        boxes = self.transform.apply_boxes_torch(prompts.boxes.to(device), frame_size)
        masks = self.mask_input(prompts.log_odds.to(device))
        low_res, _ = self._decode(image, (points, prompts.labels.to(device)), boxes, masks, multimask=True)
        logits = self.model.postprocess_masks(low_res.float(), embedding.input_size, frame_size)
        return logits > self.model.mask_threshold

    @torch.inference_mode()
    def decode(self, embedding: FrameEmbedding, prompt: ObjectPrompt, mask_input: torch.Tensor | None, multimask: bool) -> Decoded:
        """One object's clicks and box, transformed as ``SamPredictor.predict`` does."""
        (image,) = embedding.features
        points = boxes = None
        if prompt.points:
            coords = self.transform.apply_coords(np.asarray(prompt.points, dtype=np.float64), embedding.frame_size)
            labels = torch.as_tensor(prompt.labels, dtype=torch.int, device=self.device)[None]
            points = (torch.as_tensor(coords, dtype=torch.float, device=self.device)[None], labels)
        if prompt.box is not None:
            box = self.transform.apply_boxes(np.asarray(prompt.box, dtype=np.float64), embedding.frame_size)
            boxes = torch.as_tensor(box, dtype=torch.float, device=self.device)
        masks = None if mask_input is None else mask_input.to(self.device, torch.float)[None]
        low_res, scores = self._decode(image, points, boxes, masks, multimask)
        logits = self.model.postprocess_masks(low_res.float(), embedding.input_size, embedding.frame_size)
        return Decoded(logits[0] > self.model.mask_threshold, scores[0].float(), low_res[0].float())

    def _decode(
        self,
        image: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(low-res logits, predicted IoUs) of the prompt encoder and mask decoder."""
        with autocast(self.device, self.dtype):
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
            return self.model.mask_decoder(
                image_embeddings=image[None],
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )

    def mask_input(self, log_odds: torch.Tensor) -> torch.Tensor:
        """(P, H, W) log-odds -> the decoder's (P, 1, side, side) padded mask input."""
        return padded_mask_input(log_odds, self.mask_input_size)


def padded_mask_input(log_odds: torch.Tensor, side: int) -> torch.Tensor:
    """(P, H, W) log-odds -> (P, 1, side, side) in SAM's low-res frame: the image resized so
    its long side fills the square, top-left aligned, the padding set to certain background."""
    height, width = log_odds.shape[1:]
    scale = side / max(height, width)
    inner = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(log_odds[:, None].float(), size=inner, mode="bilinear", align_corners=False)
    canvas = torch.full((len(log_odds), 1, side, side), -LOGIT_CLIP, device=log_odds.device)
    canvas[:, :, : inner[0], : inner[1]] = resized
    return canvas
