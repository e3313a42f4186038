"""The Propagator: first-frame masks in, one label map per frame out (DESIGN section 4).

Set it up with frame 0's features and labels (``Propagator.start``), then feed frames one at a
time (``step``) or a batch at a time (``run``), each with its PDM features from any feature
source; it never touches the diffusion model. Per frame:

1. label propagation from the first frame and the last n frames (``memory.ContextMemory``);
2. the PDM instance prior of each object: the combined PDM map of its first-frame reference
   (its mask on the grid) against the frame;
3. fusion (``fuse``: the prior, relative to its level on the propagated object, scales each
   object's propagated mass; background is a class of its own), bilinear upsampling of the
   scores to the frame's size and a per-pixel argmax;
4. SAM refinement when a refiner is given;
5. memory write: with SAM, the refined masks (as cell fractions); without, the fused soft
   prediction, as DINO's protocol keeps (a hard argmax fed back makes thin or small objects
   shrink frame after frame: on davis-mini's motocross-jump, with colour-statistics
   stand-in features, the rider was gone by frame 6 that way and survived with soft labels).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.config import MatchConfig, MemoryConfig
from pdmtrack.features.types import PDMFeatures
from pdmtrack.matching import mask_to_grid_bool, pdm_map
from pdmtrack.memory import ContextMemory, labels_to_grid
from pdmtrack.sam.refine import FrameEmbedding, SamRefiner


def fuse(propagated: torch.Tensor, prior: torch.Tensor, weight: float) -> torch.Tensor:
    """Fused scores (1+K, h, w) of propagated soft labels (1+K, h, w) and priors (K, h, w).

    The prior only suppresses: object k's propagated mass is scaled by
    ``(1 - weight) + weight * relative_k``, background's is left as it is. ``relative_k`` is
    the prior divided by its mean under k's propagated mass, capped at 1: cells that look as
    much like k's first-frame reference as the propagated object does keep their mass, cells
    that look much less like it (a leak onto background or onto another instance) lose up to
    ``weight`` of it. A min-max normalised PDM map peaks at 1 somewhere even when its object
    is gone, so the prior never creates mass: an object that propagation finds nowhere (it
    left the frame) stays absent and background wins.
    """
    mass = propagated[1:].flatten(1)
    level = (mass * prior.flatten(1)).sum(1) / mass.sum(1).clamp_min(1e-6)
    relative = (prior / level.clamp_min(1e-6).view(-1, 1, 1)).clamp(0, 1)
    return torch.cat([propagated[:1], propagated[1:] * ((1 - weight) + weight * relative)])


@dataclass
class _Reference:
    """Frame 0 as every later frame sees it: its features and each object's grid mask."""

    features: PDMFeatures  # one frame, float32 on the compute device
    masks: list[torch.Tensor]  # per object, (h, w) bool reference tokens
    class_indices: list[int | None]


class Propagator:
    """Tracks the objects of a first-frame mask through later frames (one ``step`` each).

    ``timings`` accumulates seconds spent in "matching" (memory read, PDM maps, fusion,
    memory write) and "refinement" (SAM) for the caller's report.
    """

    def __init__(
        self,
        memory: MemoryConfig,
        match: MatchConfig,
        device: torch.device,
        refiner: SamRefiner | None = None,
    ) -> None:
        self.memory_config = memory
        self.match_config = match
        self.device = device
        self.refiner = refiner
        self.timings = {"matching": 0.0, "refinement": 0.0}
        self.object_ids: list[int] = []
        self._memory: ContextMemory | None = None
        self._reference: _Reference | None = None

    def start(
        self,
        features: PDMFeatures,
        labels: np.ndarray,
        object_ids: Sequence[int],
        class_indices: Sequence[int | None] | None = None,
    ) -> None:
        """Set up from frame 0: its features (one frame), its (H, W) uint8 object-id labels,
        the ids to track (pixels with other values are background) and, per object, the index
        of its class among ``features.class_vectors`` (None: appearance only)."""
        if len(features) != 1:
            raise ValueError(f"start takes the features of one frame, got {len(features)}")
        if class_indices is None:
            class_indices = [None] * len(object_ids)
        if len(class_indices) != len(object_ids):
            raise ValueError("one class index (or None) per object id")
        self.object_ids = [int(i) for i in object_ids]
        reference = features.to(self.device, torch.float32)
        grid = reference.grid
        classes = self.class_map(labels)
        self._reference = _Reference(
            features=reference,
            masks=[self._grid_mask(classes == k + 1, grid) for k in range(len(object_ids))],
            class_indices=list(class_indices),
        )
        first_labels = labels_to_grid(classes.to(self.device), 1 + len(object_ids), grid)
        self._memory = ContextMemory(
            self.memory_config, reference.appearance[0].flatten(1), first_labels, grid
        )

    def _grid_mask(self, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Reference tokens (h, w) bool of a (H, W) object mask on the feature grid."""
        return mask_to_grid_bool(mask, grid, self.match_config.min_fraction).to(self.device)

    def class_map(self, labels: np.ndarray) -> torch.Tensor:
        """(H, W) object ids -> (H, W) int64 class indices (0 background, k for object_ids[k-1])."""
        lookup = np.zeros(256, dtype=np.int64)
        lookup[self.object_ids] = np.arange(1, len(self.object_ids) + 1)
        return torch.from_numpy(lookup[np.asarray(labels, dtype=np.uint8)])

    def step(self, frame: np.ndarray, features: PDMFeatures) -> np.ndarray:
        """Labels (H, W) uint8 (object ids, 0 background) of the next frame (H, W, 3) uint8."""
        return next(self.run(frame[None], features))

    def run(self, frames: np.ndarray, features: PDMFeatures) -> Iterator[np.ndarray]:
        """Labels of each of a batch of consecutive frames (B, H, W, 3), in order."""
        if self._memory is None or self._reference is None:
            raise RuntimeError("Propagator.start must be called before step/run")
        if len(features) != len(frames):
            raise ValueError(f"{len(frames)} frames but features of {len(features)}")
        began = time.perf_counter()
        target = features.to(self.device, torch.float32)
        priors = self.instance_priors(target)  # (B, K, h, w)
        self._clock("matching", began)
        embeddings: list[FrameEmbedding | None] = [None] * len(frames)
        if self.refiner is not None:  # SAM's image encoder, batched over the frames
            began = time.perf_counter()
            embeddings = list(self.refiner.embed(frames))
            self._clock("refinement", began)
        for index, frame in enumerate(frames):
            yield self._track(frame, target.appearance[index].flatten(1), priors[index], embeddings[index])

    def instance_priors(self, target: PDMFeatures) -> torch.Tensor:
        """(B, K, h, w) PDM map of every object's first-frame reference over the frames."""
        reference = self._reference
        assert reference is not None
        maps = [
            pdm_map(reference.features, mask, target, class_index, self.match_config)
            if bool(mask.any())
            else torch.zeros((len(target), *target.grid), device=self.device)
            for mask, class_index in zip(reference.masks, reference.class_indices)
        ]
        if not maps:
            return torch.zeros((len(target), 0, *target.grid), device=self.device)
        return torch.stack(maps, dim=1)

    def _track(
        self, frame: np.ndarray, keys: torch.Tensor, prior: torch.Tensor, embedding: FrameEmbedding | None
    ) -> np.ndarray:
        memory = self._memory
        assert memory is not None
        began = time.perf_counter()
        grid = memory.grid
        propagated = memory.read(keys).view(-1, *grid)
        fused = fuse(propagated, prior, self.match_config.instance_weight)
        height, width = frame.shape[:2]
        scores = F.interpolate(fused[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        classes = scores.argmax(0)
        self._clock("matching", began)
        if self.refiner is None:
            remembered = (fused / fused.sum(0, keepdim=True).clamp_min(1e-6)).flatten(1)
        else:
            began = time.perf_counter()
            classes = self.refiner.refine(frame, scores, embedding)
            self._clock("refinement", began)
            remembered = labels_to_grid(classes, scores.shape[0], grid)
        began = time.perf_counter()
        memory.write(keys, remembered)
        lookup = torch.tensor([0, *self.object_ids], dtype=torch.uint8, device=classes.device)
        labels = lookup[classes].cpu().numpy()
        self._clock("matching", began)
        return labels

    def _clock(self, stage: str, began: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[stage] += time.perf_counter() - began
