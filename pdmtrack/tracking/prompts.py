"""Prompts on a video session: clicks and boxes by object id at any frame, objects ended.

What a ``VideoState`` keeps of them (``PromptBook``), the checks every prompt passes before it
changes anything, and how a prompted object's mask enters a frame's label map. The Tracker's
``add_points`` / ``add_box`` / ``clear_prompts`` / ``remove_object`` use these; SAM's side
(a prompt -> a mask) is ``sam.prompting``.

A frame whose mask was given whole (``add_mask``) holds every object's truth there; a frame
where only clicks were given holds the truth of the clicked objects (``PromptBook.masks``:
their ids, 0 elsewhere), and the other objects are tracked through it as usual. Either way
the frame is a given mask (a permanent reference) from then on.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pdmtrack.errors import ParameterError
from pdmtrack.sam.prompting import Box, ObjectPrompt, Point
from pdmtrack.sam.refine import FrameEmbedding

MAX_OBJECT_ID = 255  # object ids are uint8 pixel values; 0 is background
EMBEDDING_CACHE_FRAMES = 4  # SAM image embeddings kept per session (the frames clicked last)


@dataclass
class PromptBook:
    """A session's prompts: per (frame, object id) the clicks and box (none for a mask given
    with ``add_object_mask``) and SAM's last low-res logits; per frame the label map of its
    clicked objects; per object the frame it ends at."""

    clicks: dict[tuple[int, int], ObjectPrompt] = field(default_factory=dict)
    logits: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> (H, W) uint8 ids of its clicked objects
    ends: dict[int, int] = field(default_factory=dict)  # object id -> the frame it is gone from (forward passes)

    def objects_at(self, frame_idx: int) -> set[int]:
        """The ids clicked (or boxed) at ``frame_idx``."""
        return {obj_id for frame, obj_id in self.clicks if frame == frame_idx}

    def forget(self, frame_idx: int, obj_id: int | None = None) -> None:
        """Drop the clicks and logits at ``frame_idx`` (of one object, or of all)."""
        for key in [key for key in self.clicks if key[0] == frame_idx and obj_id in (None, key[1])]:
            del self.clicks[key]
            self.logits.pop(key, None)

    def ending_at(self, frame_idx: int) -> list[int]:
        """The objects that are gone from ``frame_idx`` on."""
        return sorted(obj_id for obj_id, frame in self.ends.items() if frame == frame_idx)


class EmbeddingCache:
    """The SAM image embeddings of the last ``capacity`` frames prompted (least recently used
    goes first), so a second click on a frame runs the decoder only."""

    def __init__(self, capacity: int = EMBEDDING_CACHE_FRAMES) -> None:
        self.capacity = capacity
        self._embeddings: OrderedDict[int, FrameEmbedding] = OrderedDict()

    def get(self, frame_idx: int, compute: Callable[[], FrameEmbedding]) -> FrameEmbedding:
        """The embedding of ``frame_idx``, computed with ``compute`` when not kept."""
        if frame_idx in self._embeddings:
            self._embeddings.move_to_end(frame_idx)
        else:
            self._embeddings[frame_idx] = compute()
            while len(self._embeddings) > self.capacity:
                self._embeddings.popitem(last=False)
        return self._embeddings[frame_idx]


def check_object_id(obj_id: object) -> int:
    """``obj_id`` as an int, or a ParameterError unless it is a whole number in 1..255."""
    if isinstance(obj_id, bool) or not isinstance(obj_id, int | np.integer) or not 1 <= int(obj_id) <= MAX_OBJECT_ID:
        raise ParameterError("obj_id", f"{obj_id!r} is not an object id (a whole number in 1..{MAX_OBJECT_ID}; 0 is background)")
    return int(obj_id)


def checked_prompt(
    points: Sequence[Sequence[float]] | np.ndarray | None,
    labels: Sequence[int] | np.ndarray | None,
    box: Sequence[float] | np.ndarray | None,
    width: int,
    height: int,
) -> ObjectPrompt:
    """Points, labels and box checked against a ``width`` x ``height`` frame (ParameterError
    naming the parameter). ``labels`` default to 1 for every point. A point or box outside
    the frame is refused, not clipped: a click off the picture is a mistake to report."""
    clicks = _checked_points(points, width, height)
    if labels is None:
        marks = (1,) * len(clicks)
    else:
        marks = tuple(_checked_label(label) for label in np.asarray(labels).reshape(-1).tolist())
        if len(marks) != len(clicks):
            raise ParameterError("labels", f"{len(marks)} labels for {len(clicks)} points (one 1/0 label per point)")
    rectangle = None if box is None else _checked_box(box, width, height)
    if not clicks and rectangle is None:
        raise ParameterError("points", "no points and no box: give at least one point or a box")
    return ObjectPrompt(clicks, marks, rectangle)


def _checked_points(points: Sequence[Sequence[float]] | np.ndarray | None, width: int, height: int) -> tuple[Point, ...]:
    if points is None:
        return ()
    values = np.asarray(points, dtype=object)
    if values.size == 0:
        return ()
    try:
        array = np.asarray(points, dtype=np.float64).reshape(-1, 2) if values.ndim == 2 and values.shape[1] == 2 else None
    except (TypeError, ValueError):
        array = None
    if array is None:
        raise ParameterError("points", "expected a list of (x, y) pairs, e.g. [(412, 230), (300, 90)]")
    for x, y in array:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ParameterError("points", f"({x}, {y}) is not a finite pixel position")
        if not (0 <= x <= width and 0 <= y <= height):
            raise ParameterError("points", f"({x:g}, {y:g}) lies outside the {width}x{height} frame (x in 0..{width}, y in 0..{height})")
    return tuple((float(x), float(y)) for x, y in array)


def _checked_label(label: object) -> int:
    if isinstance(label, bool) or label not in (0, 1):
        raise ParameterError("labels", f"{label!r} is not a point label (1: on the object, 0: not on it)")
    return int(label)  # type: ignore[call-overload]


def _checked_box(box: Sequence[float] | np.ndarray, width: int, height: int) -> Box:
    try:
        values = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = np.zeros(0)
    if values.shape != (4,):
        raise ParameterError("box", "expected (x0, y0, x1, y1) in pixels")
    if not np.isfinite(values).all():
        raise ParameterError("box", f"{tuple(values.tolist())} holds a value that is not finite")
    x0, y0, x1, y1 = values.tolist()
    if x1 <= x0 or y1 <= y0:
        raise ParameterError("box", f"({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or inverted: x1 must exceed x0 and y1 exceed y0")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ParameterError("box", f"({x0:g}, {y0:g}, {x1:g}, {y1:g}) reaches outside the {width}x{height} frame")
    return (x0, y0, x1, y1)


def with_more_clicks(previous: ObjectPrompt | None, prompt: ObjectPrompt) -> ObjectPrompt:
    """``previous`` clicks followed by ``prompt``'s; ``prompt``'s box replaces the previous one."""
    if previous is None:
        return prompt
    box = prompt.box if prompt.box is not None else previous.box
    return ObjectPrompt(previous.points + prompt.points, previous.labels + prompt.labels, box)


def paint(labels: np.ndarray, obj_id: int, mask: np.ndarray) -> np.ndarray:
    """A copy of ``labels`` with ``obj_id`` moved to ``mask``: its old pixels cleared, the
    other objects kept except where ``mask`` now lies."""
    painted = np.where(labels == obj_id, 0, labels).astype(np.uint8)
    painted[mask] = obj_id
    return painted


def merge_prompted(tracked: np.ndarray, prompted: np.ndarray, clicked: Collection[int]) -> np.ndarray:
    """A frame's labels where only some objects were clicked: the ``clicked`` ids as
    ``prompted`` holds them, every other object as tracked (except under a clicked object)."""
    merged = np.where(np.isin(tracked, list(clicked)), 0, tracked).astype(np.uint8)
    return np.where(prompted > 0, prompted, merged).astype(np.uint8)
