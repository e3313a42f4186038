"""Interactive prompts: one object's clicks and box on one frame -> its mask, as SAM's own
interactive loop makes it.

Coordinates are the frame's pixels (x, y); a label is 1 on the object, 0 off it. A single
click without a box is ambiguous (a part, the object, a group), so SAM's three outputs are
asked for and the one with the highest predicted IoU is kept; with more clicks or a box SAM
gives one output. The kept output's low-resolution logits go back in as the mask input of the
object's next click on that frame, as segment-anything's ``SamPredictor`` examples and SAM 2's
video predictor do. Backends: ``sam.vit`` and ``sam.hiera`` (``decode``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from pdmtrack.sam.refine import FrameEmbedding

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True)
class ObjectPrompt:
    """One object's clicks (points with their 1/0 labels) and box on one frame."""

    points: tuple[Point, ...] = ()
    labels: tuple[int, ...] = ()
    box: Box | None = None

    @property
    def multimask(self) -> bool:
        """Whether SAM should offer several outputs: one click and no box is ambiguous."""
        return len(self.points) == 1 and self.box is None


@dataclass(frozen=True)
class Decoded:
    """A decoder's outputs for one object: C candidate masks with their scores."""

    masks: torch.Tensor  # (C, H, W) bool, in the frame's pixels
    scores: torch.Tensor  # (C,) predicted IoU
    logits: torch.Tensor  # (C, side, side) low-resolution mask logits


@dataclass(frozen=True)
class PromptedMask:
    """The mask a prompt gave: the kept output, its predicted IoU and its low-res logits."""

    mask: np.ndarray  # (H, W) bool
    score: float
    logits: torch.Tensor  # (1, side, side): the mask input of the object's next click there


class PromptableBackend(Protocol):
    """A SAM backend whose decoder takes one object's prompt (``sam.vit``, ``sam.hiera``)."""

    def embed(self, frames: np.ndarray) -> list[FrameEmbedding]: ...

    def decode(self, embedding: FrameEmbedding, prompt: ObjectPrompt, mask_input: torch.Tensor | None, multimask: bool) -> Decoded:
        """Decode ``prompt`` on an encoded frame; ``mask_input`` (1, side, side) low-res logits."""
        ...

    def mask_input(self, log_odds: torch.Tensor) -> torch.Tensor:
        """(P, H, W) log-odds in the frame's pixels -> (P, 1, side, side) decoder mask input."""
        ...


def segment_object(
    backend: PromptableBackend, embedding: FrameEmbedding, prompt: ObjectPrompt, mask_input: torch.Tensor | None = None
) -> PromptedMask:
    """The mask of one object's ``prompt``: SAM's output of highest predicted IoU when the
    prompt is ambiguous (one click, no box), its only output otherwise."""
    decoded = backend.decode(embedding, prompt, mask_input, prompt.multimask)
    best = int(decoded.scores.argmax()) if prompt.multimask else 0
    return PromptedMask(decoded.masks[best].cpu().numpy(), float(decoded.scores[best]), decoded.logits[best : best + 1])
