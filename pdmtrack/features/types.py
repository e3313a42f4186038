"""The feature record every stage passes around, and the protocol of a feature source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass
class PDMFeatures:
    """PDM features of a batch of B frames at the hooked block's grid (h, w).

    appearance:      (B, Ca, h, w)  mean of attn1's query and key (heads merged) -> F_A
    semantic:        (B, Cs, h, w)  attn2's query of the spatial tokens -> F_S
    class_vectors:   (K, Cs) or None  attn2's key of each class name's token(s), averaged
                     over a name's tokens; K = number of distinct class names, in the
                     order given to the extractor; None when no class name was given.
    class_attention: (B, K, h, w) or None  cross-attention of each class name over the
                     spatial tokens (softmax over prompt tokens, heads averaged, a name's
                     tokens averaged), not yet min-max normalised.
    appearance_parts: (B, 2, Ca, h, w) or None  attn1's query and key kept apart (the
                     appearance is their mean), when the source is asked to keep them
                     (``FeatureConfig.separate_qk``, the authors' code matches them separately).
    prior:           PDMFeatures of the same B frames, or None  the features the instance
                     prior is computed from when they come from another source than the
                     appearance (``PriorComposite``), on that source's own grid.
    """

    appearance: torch.Tensor
    semantic: torch.Tensor
    class_vectors: torch.Tensor | None = None
    class_attention: torch.Tensor | None = None
    appearance_parts: torch.Tensor | None = None
    prior: PDMFeatures | None = None

    def __len__(self) -> int:
        return self.appearance.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the feature grid."""
        return tuple(self.appearance.shape[-2:])  # type: ignore[return-value]

    def select(self, index: int | slice | list[int]) -> PDMFeatures:
        """Frames ``index`` of the batch (an int keeps a batch axis of 1; a list copies)."""
        sl = slice(index, index + 1) if isinstance(index, int) else index
        return PDMFeatures(
            appearance=self.appearance[sl],
            semantic=self.semantic[sl],
            class_vectors=self.class_vectors,
            class_attention=None if self.class_attention is None else self.class_attention[sl],
            appearance_parts=None if self.appearance_parts is None else self.appearance_parts[sl],
            prior=None if self.prior is None else self.prior.select(index),
        )

    @property
    def prior_features(self) -> PDMFeatures:
        """The features the instance prior is computed from: ``prior``, else these."""
        return self if self.prior is None else self.prior

    def contiguous(self) -> PDMFeatures:
        """The same features with every tensor in contiguous (row-major) memory."""
        return self._map(lambda t: None if t is None else t.contiguous())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PDMFeatures:
        """Move, then optionally cast, every tensor. From pinned host memory the copies do not
        block the host (the cast runs on the device, after the copy)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, non_blocking=t.is_pinned()).to(dtype=dtype or t.dtype)

        return self._map(move)

    def pin_memory(self) -> PDMFeatures:
        """The same features in page-locked host memory (CPU tensors only), for copies to a GPU
        that do not block the host."""
        return self._map(lambda t: None if t is None else t.pin_memory())

    def _map(self, function) -> PDMFeatures:
        return PDMFeatures(
            appearance=function(self.appearance),
            semantic=function(self.semantic),
            class_vectors=function(self.class_vectors),
            class_attention=function(self.class_attention),
            appearance_parts=function(self.appearance_parts),
            prior=None if self.prior is None else self.prior._map(function),
        )

    @staticmethod
    def cat(parts: list[PDMFeatures]) -> PDMFeatures:
        """Concatenate batches along the frame axis (class vectors taken from the first)."""
        first = parts[0]

        def joined(name: str) -> torch.Tensor | None:
            return None if getattr(first, name) is None else torch.cat([getattr(p, name) for p in parts])

        return PDMFeatures(
            appearance=torch.cat([p.appearance for p in parts]),
            semantic=torch.cat([p.semantic for p in parts]),
            class_vectors=first.class_vectors,
            class_attention=joined("class_attention"),
            appearance_parts=joined("appearance_parts"),
            prior=None if first.prior is None else PDMFeatures.cat([p.prior for p in parts]),  # type: ignore[misc]
        )


class FeatureSource(Protocol):
    """Anything that turns a batch of frames into PDM features (extractor, cache, stand-in).

    A source may also offer ``probe(frames)``: the same features without side effects (no
    cache), which ``--batch-size auto`` runs once to measure a frame's GPU memory; a source
    without it gets a fixed batch size on CUDA."""

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        """frames: (B, H, W, 3) uint8 RGB -> PDMFeatures with B frames."""
        ...
