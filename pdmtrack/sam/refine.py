"""Segment Anything refinement of coarse per-object masks.

``SamRefiner.refine`` takes a frame and the fused per-class scores (background first) and
prompts SAM once per present object: the box of its coarse mask, a positive point at its
score peak, negative points at the other objects' peaks, and its coarse log-odds as the
low-resolution mask input. Of SAM's three outputs the one that agrees best (IoU) with the
coarse mask is kept; when even that one disagrees wildly the coarse mask stays. Overlaps
between objects are resolved by the fused score. Loading the model is ``sam.loading``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

LOGIT_CLIP = 20.0  # |log-odds| cap of the mask input; SAM's own low-res logits rarely exceed it
_EPS = 1e-4  # floor of a score before its log (caps the log-odds of an absent class near -9)



class MaskPredictor(Protocol):
    """What SamRefiner needs of ``segment_anything.SamPredictor`` (tests pass stand-ins)."""

    def set_image(self, image: np.ndarray) -> None: ...

    def predict(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask_output: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class ObjectPrompt:
    """SAM prompts for one object, in the frame's pixel coordinates (x, y)."""

    box: np.ndarray  # (4,) x0, y0, x1, y1 of the coarse mask (inclusive pixel indices)
    points: np.ndarray  # (P, 2) the positive peak first, then the other objects' peaks
    labels: np.ndarray  # (P,) 1 for the positive point, 0 for the negatives
    mask_input: np.ndarray  # (1, m, m) coarse log-odds in SAM's low-res padded frame


class SamRefiner:
    """Refines coarse masks with a SAM predictor (one ``set_image`` per frame).

    ``mask_input_size`` is the side of SAM's low-resolution mask input (256 for the official
    models, 4x the image-embedding side). ``min_iou``: SAM's best output must reach this IoU
    with the coarse mask, or the coarse mask is kept.
    """

    def __init__(self, predictor: MaskPredictor, *, mask_input_size: int, min_iou: float) -> None:
        self.predictor = predictor
        self.mask_input_size = mask_input_size
        self.min_iou = min_iou

    def refine(self, image: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        """image (H, W, 3) uint8 RGB, scores (1+K, H, W) fused scores in [0, 1], background
        first -> (H, W) int64 class indices (0 background, k for object k)."""
        scores = scores.float()
        coarse = scores.argmax(0)
        present = [k for k in range(1, scores.shape[0]) if bool((coarse == k).any())]
        if not present:
            return coarse
        peaks = {k: _peak_xy(scores[k], coarse == k) for k in present}
        self.predictor.set_image(image)
        masks = torch.zeros((scores.shape[0] - 1, *coarse.shape), dtype=torch.bool, device=coarse.device)
        for k in present:
            prompt = self.prompt_for(k, scores, coarse, peaks)
            outputs, _, _ = self.predictor.predict(
                point_coords=prompt.points,
                point_labels=prompt.labels,
                box=prompt.box,
                mask_input=prompt.mask_input,
                multimask_output=True,
            )
            masks[k - 1] = self.choose(torch.as_tensor(outputs, device=coarse.device), coarse == k)
        return resolve_overlaps(masks, scores[1:])

    def prompt_for(
        self, k: int, scores: torch.Tensor, coarse: torch.Tensor, peaks: dict[int, np.ndarray]
    ) -> ObjectPrompt:
        """The prompts for object ``k`` (``peaks``: score peak of every present object)."""
        ys, xs = torch.nonzero(coarse == k, as_tuple=True)
        box = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float().cpu().numpy()
        others = [peaks[j] for j in sorted(peaks) if j != k]
        points = np.stack([peaks[k], *others]).astype(np.float32)
        labels = np.array([1] + [0] * len(others), dtype=np.int64)
        return ObjectPrompt(box, points, labels, self.mask_input(coarse_log_odds(scores, k)))

    def mask_input(self, log_odds: torch.Tensor) -> np.ndarray:
        """(H, W) log-odds -> (1, m, m) in SAM's low-res frame: the image resized so its long
        side fills the square, top-left aligned, the padding set to certain background."""
        height, width = log_odds.shape
        m = self.mask_input_size
        scale = m / max(height, width)
        inner = (max(1, round(height * scale)), max(1, round(width * scale)))
        resized = F.interpolate(log_odds[None, None], size=inner, mode="bilinear", align_corners=False)
        canvas = torch.full((1, m, m), -LOGIT_CLIP, dtype=torch.float32)
        canvas[0, : inner[0], : inner[1]] = resized[0, 0].cpu()
        return canvas.numpy()

    def choose(self, outputs: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """The output (C, H, W) with the best IoU with ``coarse``, or ``coarse`` itself when
        that IoU is below ``min_iou``."""
        outputs = outputs.bool()
        ious = mask_iou(outputs, coarse[None])
        best = int(ious.argmax())
        return outputs[best] if float(ious[best]) >= self.min_iou else coarse


def coarse_log_odds(scores: torch.Tensor, k: int) -> torch.Tensor:
    """log(score_k) - log(best other score): positive exactly where class k wins the argmax,
    in the same log-odds units as SAM's own mask logits (threshold 0), clipped."""
    others = torch.cat([scores[:k], scores[k + 1 :]]).amax(0)
    margin = torch.log(scores[k].clamp_min(_EPS)) - torch.log(others.clamp_min(_EPS))
    return margin.clamp(-LOGIT_CLIP, LOGIT_CLIP)


def mask_iou(masks: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """IoU of each (C, H, W) bool mask with the (1, H, W) reference; empty vs empty is 1."""
    inter = (masks & reference).flatten(1).sum(1).float()
    union = (masks | reference).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def resolve_overlaps(masks: torch.Tensor, object_scores: torch.Tensor) -> torch.Tensor:
    """(K, H, W) bool masks -> (H, W) class indices: a pixel claimed by several objects
    goes to the one with the highest score there; unclaimed pixels are background (0)."""
    claimed = torch.where(masks, object_scores, torch.full_like(object_scores, -torch.inf))
    winner = claimed.argmax(0) + 1
    return torch.where(masks.any(0), winner, torch.zeros_like(winner))


def _peak_xy(score: torch.Tensor, region: torch.Tensor) -> np.ndarray:
    """(x, y) of the highest ``score`` inside ``region`` (a non-empty bool mask)."""
    masked = torch.where(region, score, torch.full_like(score, -torch.inf))
    flat = int(masked.flatten().argmax())
    width = score.shape[1]
    return np.array([flat % width, flat // width], dtype=np.float32)
