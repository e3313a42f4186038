"""The Propagator: given masks in, one label map per frame out.

Give it a mask with its frame's features (``add_keyframe``: the first mask, a correction or
new objects), then feed frames one at a time (``step``) or a batch at a time (``track``), each
with its PDM features from any feature source; it never touches the diffusion model, never
writes files and never times itself. Per frame:

1. label propagation from the keyframes and the last n frames (``memory.ContextMemory``);
2. the PDM instance prior of each object: the combined PDM map of its reference (its mask on
   the grid in the latest given mask that holds it) against the frame; when the features carry
   another source's record as their ``prior`` (``PriorComposite``), the maps are computed on
   that record's grid and resampled bilinearly to the propagation grid;
3. fusion (``fuse``: the prior, relative to its level on the propagated object, scales each
   object's propagated mass; background is a class of its own), bilinear upsampling of the
   scores to the frame's size and a per-pixel argmax of the raw scores (DINO's and DIFT's
   ``norm_mask`` is not adopted: docs/protocols.md gives the measurement and why);
4. SAM refinement when a refiner is given;
5. memory write: with SAM, the refined masks (as cell fractions); without, the fused soft
   prediction, as DINO's protocol keeps (a hard argmax fed back makes thin or small objects
   shrink frame after frame: on davis-mini's motocross-jump, with colour-statistics
   stand-in features, the rider was gone by frame 6 that way and survived with soft labels).

With ``MemoryConfig.protocol`` dift (or authors-code) steps 2-5 are DINO's and DIFT's
``eval_davis.py`` instead: no instance prior; given masks enter the memory as the one-hot of
the mask nearest-resized to the grid; the propagated soft labels are upsampled bilinearly by
the grid's stride (the frame's short side over the grid's, rounded), each label channel is
min-max normalised over the image (``normalise_label_maps``, their ``norm_mask``), the argmax
is nearest-resized to the frame, and the memory keeps the propagated soft labels as they are.

A given mask is the whole truth at its frame: ids it holds are tracked from there on (new ids
start there, and the memory's keyframes restart at it), tracked ids it lacks end there.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.config import MatchConfig, MemoryConfig
from pdmtrack.features.types import PDMFeatures
from pdmtrack.sam.refine import FrameEmbedding, SamRefiner, resolve_overlaps
from pdmtrack.tracking.matching import mask_to_grid_bool, minmax, pdm_map, reference_mask_from_attention
from pdmtrack.tracking.memory import ContextMemory, labels_to_grid, labels_to_grid_nearest, nearest_resize
from pdmtrack.tracking.objects import ObjectScores, ObjectSlots, object_ids_in


def fuse(propagated: torch.Tensor, prior: torch.Tensor, weight: float) -> torch.Tensor:
    """Fused scores (1+K, h, w) of propagated soft labels (1+K, h, w) and priors (K, h, w).

    The prior only suppresses: object k's propagated mass is scaled by
    ``(1 - weight) + weight * relative_k``, background's is left as it is. ``relative_k`` is
    the prior divided by its mean under k's propagated mass, capped at 1: cells that look as
    much like k's reference as the propagated object does keep their mass, cells that look
    much less like it (a leak onto background or onto another instance) lose up to
    ``weight`` of it. A min-max normalised PDM map peaks at 1 somewhere even when its object
    is gone, so the prior never creates mass: an object that propagation finds nowhere (it
    left the frame) stays absent and background wins.
    """
    mass = propagated[1:].flatten(1)
    level = (mass * prior.flatten(1)).sum(1) / mass.sum(1).clamp_min(1e-6)
    relative = (prior / level.clamp_min(1e-6).view(-1, 1, 1)).clamp(0, 1)
    return torch.cat([propagated[:1], propagated[1:] * ((1 - weight) + weight * relative)])


def normalise_label_maps(scores: torch.Tensor) -> torch.Tensor:
    """DINO's and DIFT's ``norm_mask`` on (L, H, W) scores: each channel whose maximum is positive
    is shifted to a minimum of 0 and divided by its new maximum (a channel left all zeros by the
    shift stays zeros, where theirs divides by zero); other channels are left as they are."""
    low = scores.amin(dim=(1, 2), keepdim=True)
    shifted = scores - low
    span = shifted.amax(dim=(1, 2), keepdim=True)
    normalised = shifted / torch.where(span > 0, span, torch.ones_like(span))
    positive = scores.amax(dim=(1, 2), keepdim=True) > 0
    return torch.where(positive, normalised, scores)


def grid_stride(frame_size: tuple[int, int], grid: tuple[int, int]) -> int:
    """Pixels per grid cell on the short side, rounded (at least 1): the factor DINO and DIFT
    upsample label maps by before the nearest resize to the frame."""
    return max(1, round(min(frame_size) / min(grid)))


@dataclass
class _Reference:
    """An object as later frames see it: the features of the given mask's frame, its cells there."""

    features: PDMFeatures  # the prior's features of one frame, float32 on the compute device (shared by a keyframe's objects)
    mask: torch.Tensor  # (h, w) bool reference tokens on their grid
    class_index: int | None  # row of its class in ``features.class_vectors`` (None: appearance only)


class Propagator:
    """Tracks the objects of given masks through later (or earlier) frames, one ``step`` each."""

    def __init__(
        self,
        memory: MemoryConfig,
        match: MatchConfig,
        device: torch.device,
        refiner: SamRefiner | None = None,
        search_dtype: torch.dtype = torch.float32,
    ) -> None:
        """``search_dtype``: the memory read's first-pass precision (see ``ContextMemory``)."""
        self.memory_config = memory
        self.match_config = match
        self.device = device
        self.refiner = refiner
        self.search_dtype = search_dtype
        self.objects = ObjectSlots(())
        self._memory: ContextMemory | None = None
        self._references: dict[int, _Reference] = {}

    @property
    def tracking(self) -> bool:
        """Whether a keyframe was given (``step``/``track`` may run)."""
        return self._memory is not None

    def add_keyframe(
        self, features: PDMFeatures, labels: np.ndarray, class_indices: Mapping[int, int | None] | None = None, keep: Collection[int] = ()
    ) -> None:
        """A given mask: ``features`` of its frame (one frame), its (H, W) uint8 object ids and,
        per object id, the row of its class among ``features.class_vectors`` (absent/None:
        appearance only). Its objects take this frame as their reference. Tracked ids it lacks
        end here, except those in ``keep``: a frame where only some objects were given, the
        others tracked, keeps those tracked, with their earlier references."""
        if len(features) != 1:
            raise ValueError(f"a keyframe takes the features of one frame, got {len(features)}")
        class_indices = class_indices or {}
        present = object_ids_in(labels)
        frame_features = features.to(self.device, torch.float32)
        grid, prior_features = frame_features.grid, frame_features.prior_features
        added: list[int] = []
        if self._memory is None:
            channels = frame_features.appearance.shape[1]
            self._memory = ContextMemory(self.memory_config, grid, channels, 1 + len(present), self.device, self.search_dtype)
        else:
            kept = [i for i in self.objects.ids if i in present or i in keep]
            added = [i for i in present if i not in self.objects.ids]
            self._memory.remap_labels([0, *map(self.objects.slot, kept)], len(added))
            present = kept + added
        earlier = self._references
        self.objects = ObjectSlots.of(present)
        slots = self.objects.to_slots(labels).to(self.device)
        self._references = {
            object_id: _Reference(
                prior_features,
                mask_to_grid_bool(slots == self.objects.slot(object_id), prior_features.grid, self.match_config.min_fraction),
                class_indices.get(object_id) if prior_features.class_vectors is not None else None,
            )
            if object_id not in keep or object_id not in earlier
            else earlier[object_id]
            for object_id in self.objects.ids
        }
        keys = frame_features.appearance[0].flatten(1)
        to_grid = labels_to_grid_nearest if self._memory.exact else labels_to_grid
        self._memory.add_keyframe(keys, to_grid(slots, self.objects.num_slots, grid), restart=bool(added))

    def end_objects(self, object_ids: Collection[int]) -> None:
        """Stop tracking ``object_ids`` (``remove_object`` from a frame on): their mass in the
        memory goes to background."""
        ending = [i for i in self.objects.ids if i in object_ids]
        if self._memory is None or not ending:
            return
        kept = [i for i in self.objects.ids if i not in object_ids]
        self._memory.fold_into_background([self.objects.slot(i) for i in ending])
        self._memory.remap_labels([0, *map(self.objects.slot, kept)], 0)
        self.objects = ObjectSlots.of(kept)
        self._references = {i: self._references[i] for i in kept}

    def step(self, frame: np.ndarray, features: PDMFeatures) -> np.ndarray:
        """Labels (H, W) uint8 (object ids, 0 background) of the next frame (H, W, 3) uint8."""
        return next(self.track(frame[None], features))

    def track(self, frames: np.ndarray, features: PDMFeatures) -> Iterator[np.ndarray]:
        """Labels of each of a batch of consecutive frames (B, H, W, 3), in tracking order."""
        return (labels for labels, _ in self._frames(frames, features, with_scores=False))

    def track_scored(self, frames: np.ndarray, features: PDMFeatures) -> Iterator[tuple[np.ndarray, ObjectScores]]:
        """``track``, each frame's labels with the scores they were chosen from."""
        return ((labels, scores) for labels, scores in self._frames(frames, features, with_scores=True) if scores is not None)

    def _frames(self, frames: np.ndarray, features: PDMFeatures, with_scores: bool) -> Iterator[tuple[np.ndarray, ObjectScores | None]]:
        if self._memory is None:
            raise RuntimeError("Propagator.add_keyframe must be called before step/track")
        if len(features) != len(frames):
            raise ValueError(f"{len(frames)} frames but features of {len(features)}")
        target = features.to(self.device, torch.float32)
        exact = self._memory.exact
        priors = None if exact else self.instance_priors(target)  # (B, K, h, w)
        embeddings: list[FrameEmbedding | None] = [None] * len(frames)
        if self.refiner is not None:  # SAM's image encoder, batched over the frames
            embeddings = list(self.refiner.embed(frames))
        for index, frame in enumerate(frames):
            keys = target.appearance[index].flatten(1)
            if priors is None:
                slots, scores = self._track_exact(frame, keys, embeddings[index])
            else:
                slots, scores = self._track(frame, keys, priors[index], embeddings[index])
            yield self.objects.to_ids(slots), self.objects.scores(scores) if with_scores else None

    def instance_priors(self, target: PDMFeatures) -> torch.Tensor:
        """(B, K, h, w) PDM map of every object's reference over the frames, on the
        propagation grid (resampled bilinearly from the prior's own grid when they differ)."""
        features = target.prior_features
        maps = [
            pdm_map(ref.features, ref.mask, features, ref.class_index, self.match_config)
            if bool(ref.mask.any())
            else torch.zeros((len(target), *features.grid), device=self.device)
            for ref in (self._references[object_id] for object_id in self.objects.ids)
        ]
        if not maps:
            return torch.zeros((len(target), 0, *target.grid), device=self.device)
        priors = torch.stack(maps, dim=1)
        if features.grid != target.grid:
            priors = F.interpolate(priors, size=target.grid, mode="bilinear", align_corners=False)
        return priors

    def _track(
        self, frame: np.ndarray, keys: torch.Tensor, prior: torch.Tensor, embedding: FrameEmbedding | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(H, W) slots of one frame and the (1 + K, H, W) scores they were chosen from."""
        memory = self._memory
        assert memory is not None
        grid = memory.grid
        propagated = memory.read(keys).view(-1, *grid)
        fused = fuse(propagated, prior, self.match_config.instance_weight)
        height, width = frame.shape[:2]
        scores = F.interpolate(fused[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        if self.refiner is None:
            slots = scores.argmax(0)
            remembered = (fused / fused.sum(0, keepdim=True).clamp_min(1e-6)).flatten(1)
        else:
            slots = self.refiner.refine(frame, scores, embedding)
            remembered = labels_to_grid(slots, scores.shape[0], grid)
        memory.write(keys, remembered)
        return slots, scores

    def _track_exact(self, frame: np.ndarray, keys: torch.Tensor, embedding: FrameEmbedding | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame of DINO's and DIFT's protocol (module docstring); with a refiner, SAM
        refines the argmax's scores and the memory keeps the refined masks as cell fractions."""
        memory = self._memory
        assert memory is not None
        grid = memory.grid
        propagated = memory.read(keys)
        height, width = frame.shape[:2]
        stride = grid_stride((height, width), grid)
        upsampled = F.interpolate(
            propagated.view(1, -1, *grid), scale_factor=stride, mode="bilinear", align_corners=False, recompute_scale_factor=False
        )[0]
        scores = normalise_label_maps(upsampled)
        slots = nearest_resize(scores.argmax(0), (height, width))
        if self.refiner is None:
            memory.write(keys, propagated)
            # nearest-exact samples pixel centres, as PIL's nearest does: the argmax stays ``slots``
            return slots, F.interpolate(scores[None], size=(height, width), mode="nearest-exact")[0]
        full = F.interpolate(scores[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        slots = self.refiner.refine(frame, full, embedding)
        memory.write(keys, labels_to_grid(slots, full.shape[0], grid))
        return slots, full


def mask_from_class_names(
    frame: np.ndarray, features: PDMFeatures, tau: float, device: torch.device, refiner: SamRefiner | None
) -> np.ndarray:
    """Labels of a frame from the class names alone (paper Eq. 3-4): each class's
    cross-attention map, upsampled to the frame, min-max normalised and thresholded at ``tau``;
    a pixel claimed by several classes goes to the strongest; SAM refines when given.
    Object k+1 is the k-th distinct class name. ``ValueError`` when no class clears ``tau``."""
    if features.class_attention is None:
        raise ValueError("the features carry no class attention (was a class name given?)")
    height, width = frame.shape[:2]
    attention = features.class_attention[0].to(device, torch.float32)
    upsampled = F.interpolate(attention[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    masks = reference_mask_from_attention(upsampled, tau)
    scores = minmax(upsampled)
    if not bool(masks.any()):
        raise ValueError("the class name's attention is flat on the frame")
    if refiner is None:
        return resolve_overlaps(masks, scores).to(torch.uint8).cpu().numpy()
    background = torch.full_like(scores[:1], tau)  # class k wins where its map passes tau
    return refiner.refine(frame, torch.cat([background, scores])).to(torch.uint8).cpu().numpy()
