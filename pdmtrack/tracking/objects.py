"""Object ids <-> label slots: the one mapping between what users see and what the memory holds.

Users name objects by id (pixel values 1..255 of a mask); the propagator's soft labels have one
channel ("slot") per tracked object after the background's slot 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ObjectSlots:
    """The tracked object ids in slot order: ``ids[k]`` lives in slot ``k + 1``."""

    ids: tuple[int, ...]

    @staticmethod
    def of(ids: Iterable[int]) -> ObjectSlots:
        return ObjectSlots(tuple(int(i) for i in ids))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_slots(self) -> int:
        """Label channels: background plus one per object."""
        return 1 + len(self.ids)

    def slot(self, object_id: int) -> int:
        """The slot of ``object_id`` (ValueError when it is not tracked)."""
        return 1 + self.ids.index(int(object_id))

    def to_slots(self, labels: np.ndarray) -> torch.Tensor:
        """(H, W) uint8 object ids -> (H, W) int64 slots; untracked ids become background."""
        lookup = np.zeros(256, dtype=np.int64)
        lookup[list(self.ids)] = np.arange(1, len(self.ids) + 1)
        return torch.from_numpy(lookup[np.asarray(labels, dtype=np.uint8)])

    def to_ids(self, slots: torch.Tensor) -> np.ndarray:
        """(H, W) slots (any device) -> (H, W) uint8 object ids on the CPU."""
        lookup = torch.tensor([0, *self.ids], dtype=torch.uint8, device=slots.device)
        return lookup[slots].cpu().numpy()

    def scores(self, slot_scores: torch.Tensor) -> ObjectScores:
        """(1 + K, H, W) scores per slot (background first) -> ``ObjectScores`` on the CPU."""
        values = slot_scores.float().cpu().numpy()
        return ObjectScores(self.ids, values[0], values[1:])

    def one_hot(self, labels: np.ndarray) -> ObjectScores:
        """The scores of a given mask: 1 where each object (or background) is, 0 elsewhere."""
        objects = labels[None] == np.array(self.ids, dtype=np.int64).reshape(-1, 1, 1)
        return ObjectScores(self.ids, (labels == 0).astype(np.float32), objects.astype(np.float32))


@dataclass(frozen=True)
class ObjectScores:
    """The per-pixel scores a frame's labels were chosen from (``propagate(with_scores=True)``):
    background's and each tracked object's, the labels being their argmax (without SAM; with
    SAM, the scores SAM was prompted from). A given frame's are its mask as 1s and 0s."""

    object_ids: tuple[int, ...]
    background: np.ndarray  # (H, W) float32
    objects: np.ndarray  # (K, H, W) float32, row k for object_ids[k]

    def of(self, object_id: int) -> np.ndarray:
        """(H, W) scores of ``object_id`` (ValueError when it is not tracked at this frame)."""
        return self.objects[self.object_ids.index(int(object_id))]

    def argmax(self) -> np.ndarray:
        """(H, W) uint8 object ids of the highest score (0: background; ties to the first)."""
        best = np.concatenate([self.background[None], self.objects]).argmax(0)
        return np.array([0, *self.object_ids], dtype=np.uint8)[best]


def object_ids_in(labels: np.ndarray) -> list[int]:
    """The object ids present in a (H, W) label map, ascending (0 is background)."""
    return [int(i) for i in np.unique(labels) if i != 0]
