"""Segment Anything refinement of coarse per-object masks, with any SAM backend.

``SamRefiner.refine`` takes a frame and the fused per-class scores (background first) and
prompts SAM for every present object at once (one decoder call per frame): the box of its
coarse mask, a positive point at its score peak, negative points at the other objects' peaks,
and its coarse log-odds as the low-resolution mask input. Of SAM's three outputs the one that
agrees best (IoU) with the coarse mask is kept; when even that one disagrees wildly the coarse
mask stays. Overlaps between objects are resolved by the fused score.

The image encoder, SAM's big cost, runs batched over frames: ``SamRefiner.embed(frames)``
encodes a batch, and ``refine(frame, scores, embedding)`` reuses an embedding. Backends:
``sam.vit`` (segment-anything's ViT-B/L/H) and ``sam.hiera`` (SAM 2.1 through transformers);
loading them is ``sam.loading``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

LOGIT_CLIP = 20.0  # |log-odds| cap of the mask input; SAM's own low-res logits rarely exceed it
_EPS = 1e-4  # floor of a score before its log (caps the log-odds of an absent class near -9)


@dataclass(frozen=True)
class FrameEmbedding:
    """A frame as a SAM backend encoded it: its feature maps (no batch dimension), the
    frame's (height, width) and the (height, width) the encoder saw it at (before padding)."""

    features: tuple[torch.Tensor, ...]
    frame_size: tuple[int, int]
    input_size: tuple[int, int]


@dataclass(frozen=True)
class FramePrompts:
    """SAM prompts for the P present objects of one frame, in the frame's pixels (x, y)."""

    boxes: torch.Tensor  # (P, 4) x0, y0, x1, y1 of each coarse mask (inclusive pixel indices)
    points: torch.Tensor  # (P, P, 2) per object: its positive peak first, then the others' peaks
    labels: torch.Tensor  # (P, P) int64: 1 for the positive point, 0 for the negatives
    log_odds: torch.Tensor  # (P, H, W) coarse log-odds (positive where the object wins)


class SamBackend(Protocol):
    """An image encoder and a prompt decoder (``sam.vit``, ``sam.hiera``; tests pass stand-ins)."""

    def embed(self, frames: np.ndarray) -> list[FrameEmbedding]:
        """Encode (B, H, W, 3) uint8 RGB frames, batched."""
        ...

    def predict(self, embedding: FrameEmbedding, prompts: FramePrompts) -> torch.Tensor:
        """(P, C, H, W) bool candidate masks per object, all objects in one decoder call."""
        ...


class SamRefiner:
    """Refines coarse masks with a SAM backend. ``min_iou``: SAM's best output must reach this
    IoU with the coarse mask, or the coarse mask is kept."""

    def __init__(self, backend: SamBackend, *, min_iou: float) -> None:
        self.backend = backend
        self.min_iou = min_iou

    def embed(self, frames: np.ndarray) -> list[FrameEmbedding]:
        """Image embeddings of a batch of (B, H, W, 3) frames, for later ``refine`` calls."""
        return self.backend.embed(frames)

    def refine(self, image: np.ndarray, scores: torch.Tensor, embedding: FrameEmbedding | None = None) -> torch.Tensor:
        """image (H, W, 3) uint8 RGB, scores (1+K, H, W) fused scores in [0, 1], background
        first -> (H, W) int64 class indices (0 background, k for object k). ``embedding``:
        the frame's from ``embed`` (computed here when not given)."""
        scores = scores.float()
        coarse = scores.argmax(0)
        objects = coarse[None] == torch.arange(1, scores.shape[0], device=coarse.device)[:, None, None]
        present = torch.nonzero(objects.flatten(1).any(1)).flatten()
        if len(present) == 0:
            return coarse
        if embedding is None:
            embedding = self.backend.embed(image[None])[0]
        regions = objects[present]
        outputs = self.backend.predict(embedding, frame_prompts(scores, regions, present + 1))
        chosen = choose(outputs.to(coarse.device), regions, self.min_iou)
        masks = torch.zeros_like(objects)
        masks[present] = chosen
        return resolve_overlaps(masks, scores[1:])


def frame_prompts(scores: torch.Tensor, regions: torch.Tensor, classes: torch.Tensor) -> FramePrompts:
    """Prompts of the objects ``classes`` (P,) whose coarse masks are ``regions`` (P, H, W)."""
    count, height, width = regions.shape
    object_scores = scores[classes]
    peaks = torch.where(regions, object_scores, torch.full_like(object_scores, -torch.inf)).flatten(1).argmax(1)
    peaks_xy = torch.stack([peaks % width, peaks // width], dim=1).float()  # (P, 2)
    order = torch.tensor(_positive_first(count), device=scores.device)
    labels = torch.zeros((count, count), dtype=torch.int64, device=scores.device)
    labels[:, 0] = 1
    return FramePrompts(_boxes(regions), peaks_xy[order], labels, coarse_log_odds(scores, classes))


def _positive_first(count: int) -> list[list[int]]:
    """Per object i: i, then every other object in order."""
    return [[i, *(j for j in range(count) if j != i)] for i in range(count)]


def _boxes(regions: torch.Tensor) -> torch.Tensor:
    """(P, 4) float x0, y0, x1, y1 (inclusive) of non-empty (P, H, W) bool masks."""
    rows, cols = regions.any(2), regions.any(1)
    first_row, first_col = rows.int().argmax(1), cols.int().argmax(1)
    last_row = rows.shape[1] - 1 - rows.flip(1).int().argmax(1)
    last_col = cols.shape[1] - 1 - cols.flip(1).int().argmax(1)
    return torch.stack([first_col, first_row, last_col, last_row], dim=1).float()


def coarse_log_odds(scores: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(P, H, W) log(score_k) - log(best other score) for each k in ``classes``: positive
    exactly where class k wins the argmax, in SAM's mask-logit units (threshold 0), clipped."""
    logs = torch.log(scores.clamp_min(_EPS))
    top2, top2_index = logs.topk(min(2, len(logs)), dim=0)
    mine = logs[classes]
    others = torch.where(top2_index[:1] == classes[:, None, None], top2[-1:], top2[:1])
    return (mine - others).clamp(-LOGIT_CLIP, LOGIT_CLIP)


def choose(outputs: torch.Tensor, regions: torch.Tensor, min_iou: float) -> torch.Tensor:
    """Per object, the output of (P, C, H, W) with the best IoU with its coarse mask in
    ``regions`` (P, H, W), or the coarse mask itself when that IoU is below ``min_iou``."""
    outputs = outputs.bool()
    ious = mask_iou(outputs, regions[:, None])  # (P, C)
    best_iou, best = ious.max(1)
    picked = outputs[torch.arange(len(outputs), device=outputs.device), best]
    return torch.where((best_iou >= min_iou)[:, None, None], picked, regions)


def mask_iou(masks: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """IoU over the last two dims of bool masks (broadcast against ``reference``); empty vs
    empty is 1."""
    inter = (masks & reference).flatten(-2).sum(-1).float()
    union = (masks | reference).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def resolve_overlaps(masks: torch.Tensor, object_scores: torch.Tensor) -> torch.Tensor:
    """(K, H, W) bool masks -> (H, W) class indices: a pixel claimed by several objects
    goes to the one with the highest score there; unclaimed pixels are background (0)."""
    claimed = torch.where(masks, object_scores, torch.full_like(object_scores, -torch.inf))
    winner = claimed.argmax(0) + 1
    return torch.where(masks.any(0), winner, torch.zeros_like(winner))
