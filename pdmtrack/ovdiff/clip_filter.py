"""Category pre-filtering with CLIP: which of the given classes an image likely shows.

CLIP (transformers ``CLIPModel``, hub id or local folder, safetensors only) scores the image
against "a photo of a {class}." for every class; the softmax over the classes is read as a
multi-label score: a class is kept when its probability reaches ``min_prob``, and the most
likely class is always kept. The segmenter then considers only the kept classes.
"""

from __future__ import annotations

import numpy as np
import torch

from pdmtrack.errors import ParameterError
from pdmtrack.io.files import hub_offline

TEXT_TEMPLATE = "a photo of a {cls}."


class ClipFilter:
    """A loaded CLIP model that keeps the classes likely present in an image."""

    def __init__(self, model: str, device: torch.device, min_prob: float) -> None:
        from transformers import CLIPModel, CLIPProcessor
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        try:
            self.processor = CLIPProcessor.from_pretrained(model, local_files_only=hub_offline())
            clip = CLIPModel.from_pretrained(model, local_files_only=hub_offline(), use_safetensors=True)
        except (OSError, ValueError) as err:
            problem = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ParameterError("clip", f"cannot load CLIP '{model}' ({problem}); pass a local folder or --clip none") from err
        self.model = clip.to(device).eval().requires_grad_(False)
        self.device = device
        self.min_prob = min_prob

    @torch.inference_mode()
    def probabilities(self, image: np.ndarray, names: list[str]) -> torch.Tensor:
        """(K,) softmax over the classes of CLIP's image-text logits for an (H, W, 3) uint8 image."""
        texts = [TEXT_TEMPLATE.format(cls=name) for name in names]
        inputs = self.processor(text=texts, images=image, return_tensors="pt", padding=True)
        outputs = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        return outputs.logits_per_image[0].float().softmax(-1).cpu()

    def keep(self, image: np.ndarray, names: list[str]) -> list[bool]:
        """Per class, whether the image likely shows it (the most likely class always)."""
        probs = self.probabilities(image, names)
        kept = probs >= self.min_prob
        kept[int(probs.argmax())] = True
        return kept.tolist()
