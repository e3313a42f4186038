"""Tracking from given masks in both directions, merged into one stream in frame order.

``Tracker.propagate(direction="both")`` runs a backward pass from the last given mask down
to the range's first frame, then a forward pass from the first given mask to the range's
end; a frame between two given masks takes the prediction of the nearer one (the error of
label propagation grows with the distance to its reference; ties go forward), frames
before the first given mask take the backward pass's. The backward predictions wait for
their turn compressed in memory (``LabelStore``: a few kB a frame, not the frame's size).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

import numpy as np

# zlib level 1: label maps are long runs of a few ids; higher levels gain little and cost time
_LEVEL = 1


class LabelStore:
    """(H, W) uint8 label maps by frame index, kept zlib-compressed in memory."""

    def __init__(self) -> None:
        self._frames: dict[int, tuple[bytes, tuple[int, int]]] = {}

    def put(self, frame_idx: int, labels: np.ndarray) -> None:
        self._frames[frame_idx] = (zlib.compress(np.ascontiguousarray(labels, np.uint8).tobytes(), _LEVEL), labels.shape)

    def pop(self, frame_idx: int) -> np.ndarray:
        data, shape = self._frames.pop(frame_idx)
        return np.frombuffer(zlib.decompress(data), np.uint8).reshape(shape).copy()

    @property
    def stored_bytes(self) -> int:
        """Compressed bytes held now."""
        return sum(len(data) for data, _ in self._frames.values())


def backward_wins(keyframes: list[int]) -> Callable[[int], bool]:
    """Whether frame t takes the backward prediction: before the first given mask, or nearer
    to the next given mask than to the previous one (``keyframes`` ascending)."""

    def wins(frame: int) -> bool:
        if frame in keyframes or frame > keyframes[-1]:
            return False
        if frame < keyframes[0]:
            return True
        previous = max(k for k in keyframes if k < frame)
        following = min(k for k in keyframes if k > frame)
        return following - frame < frame - previous

    return wins


def merge_two_way(
    backward: Iterator[tuple[int, np.ndarray]], forward: Callable[[], Iterator[tuple[int, np.ndarray]]], keyframes: list[int], start: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(frame, labels) ascending from ``start``: the whole ``backward`` pass runs first (its
    winning frames stored), then ``forward()``'s pass, each frame from the nearer pass."""
    wins = backward_wins(keyframes)
    store = LabelStore()
    for frame_idx, labels in backward:
        if wins(frame_idx):
            store.put(frame_idx, labels)
    yield from ((frame, store.pop(frame)) for frame in range(start, keyframes[0]))
    for frame_idx, labels in forward():
        yield frame_idx, store.pop(frame_idx) if wins(frame_idx) else labels


def in_frame_order(results: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
    """``results`` (any order, e.g. a backward pass) ascending by frame, once all are in."""
    store = LabelStore()
    frames = []
    for frame_idx, labels in results:
        store.put(frame_idx, labels)
        frames.append(frame_idx)
    yield from ((frame, store.pop(frame)) for frame in sorted(frames))
