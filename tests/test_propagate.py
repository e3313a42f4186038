"""Propagator and its memory on synthetic clips drawn here, with a stand-in feature source.

The stand-in maps every 8x8-pixel cell to statistics of its pixels (mean colour, colour
spread, horizontal and vertical gradient energy), so appearance really depends on what is
drawn: objects of the same shape differ only by texture, as instances of one class do.

IoU bars: the feature grid has 8-pixel cells and the scores are upsampled bilinearly, so a
mask edge can land up to half a cell (4 px) off on each side. For the 32-px squares drawn
here that bounds the IoU of a correctly followed, fully visible object at
(32 - 8)^2 / 32^2 = 0.56 in the worst case; a tracker that follows the right instance does
much better on average, a swapped or lost one scores near 0. Bars: every fully visible frame
>= 0.55, the clip mean >= 0.7.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pdmtrack.config import MatchConfig, MemoryConfig
from pdmtrack.features.types import PDMFeatures
from pdmtrack.tracking.memory import ContextMemory, labels_to_grid, scaled_radius
from pdmtrack.tracking.propagator import Propagator, fuse

HEIGHT, WIDTH, CELL, SIDE = 128, 160, 8, 32
MIN_IOU_VISIBLE = 0.55  # worst case of a followed object (half-cell error per edge), see above
MIN_MEAN_IOU = 0.7


class CellStatistics:
    """FeatureSource stand-in: per-cell colour and texture statistics of the frames."""

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        pixels = torch.from_numpy(frames).float() / 255  # (B, H, W, 3)
        batch, height, width, _ = pixels.shape
        grid = (height // CELL, width // CELL)

        def pool(values: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, C, h, w)
            cells = values.reshape(batch, grid[0], CELL, grid[1], CELL, -1)
            return cells.mean(dim=(2, 4)).permute(0, 3, 1, 2)

        mean = pool(pixels)
        spread = (pool(pixels**2) - mean**2).clamp_min(0).sqrt()
        luminance = pixels.mean(-1, keepdim=True)
        dx = torch.zeros_like(luminance)
        dy = torch.zeros_like(luminance)
        dx[:, :, 1:] = (luminance[:, :, 1:] - luminance[:, :, :-1]).abs()
        dy[:, 1:] = (luminance[:, 1:] - luminance[:, :-1]).abs()
        appearance = torch.cat([mean - 0.5, 2 * spread, 2 * pool(dx), 2 * pool(dy)], dim=1)
        texture = spread.mean(1, keepdim=True)
        semantic = torch.cat([texture, torch.full_like(texture, 0.05)], dim=1)
        return PDMFeatures(
            appearance=appearance.half(),
            semantic=semantic.half(),
            class_vectors=torch.tensor([[1.0, 0.0]]).half(),
            class_attention=texture.half(),
        )


def textured_square(kind: str) -> np.ndarray:
    """A SIDE x SIDE patch: the same shape for every object, a texture of its own."""
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    palettes = {
        "stripes": ((rows // 4) % 2, (230, 60, 40), (250, 210, 40)),
        "columns": ((cols // 4) % 2, (30, 70, 220), (60, 220, 230)),
        "checker": (((rows // 4) + (cols // 4)) % 2, (40, 180, 60), (220, 60, 200)),
    }
    pattern, first, second = palettes[kind]
    return np.where(pattern[..., None] == 0, np.array(first), np.array(second)).astype(np.uint8)


@dataclass
class Track:
    """One drawn object: its texture and top-left corner per frame (may leave the frame)."""

    object_id: int
    kind: str
    positions: list[tuple[int, int]]


def draw_clip(tracks: list[Track], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and visible-truth labels (T, H, W) uint8; later tracks are
    drawn over earlier ones (they occlude them)."""
    rng = np.random.default_rng(seed)
    length = len(tracks[0].positions)
    base = np.array([95, 105, 100], dtype=np.int16)
    frames = np.clip(base + rng.normal(0, 6, (length, HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
    truth = np.zeros((length, HEIGHT, WIDTH), dtype=np.uint8)
    for track in tracks:
        patch = textured_square(track.kind)
        for t, (top, left) in enumerate(track.positions):
            y0, y1 = max(top, 0), min(top + SIDE, HEIGHT)
            x0, x1 = max(left, 0), min(left + SIDE, WIDTH)
            if y0 >= y1 or x0 >= x1:
                continue
            frames[t, y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
            truth[t, y0:y1, x0:x1] = track.object_id
    return frames, truth


def track_clip(
    frames: np.ndarray,
    first_labels: np.ndarray,
    object_ids: list[int],
    memory: MemoryConfig = MemoryConfig(),
    class_indices: list[int | None] | None = None,
    batch: int = 4,
) -> np.ndarray:
    """Run the Propagator over the clip the way the pipeline does (batches of features)."""
    source = CellStatistics()
    propagator = Propagator(memory, MatchConfig(), torch.device("cpu"))
    tracked = np.where(np.isin(first_labels, object_ids), first_labels, 0).astype(np.uint8)
    rows = dict(zip(object_ids, class_indices)) if class_indices else None
    propagator.add_keyframe(source(frames[:1]), tracked, rows)
    results = [first_labels]
    for begin in range(1, len(frames), batch):
        chunk = frames[begin : begin + batch]
        results.extend(propagator.track(chunk, source(chunk)))
    return np.stack(results)


def first_frame_memory(config: MemoryConfig, keys: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int]) -> ContextMemory:
    """A memory holding one keyframe: ``keys`` (C, N) with soft ``labels`` (L, N)."""
    memory = ContextMemory(config, grid, keys.shape[0], labels.shape[0], keys.device)
    memory.add_keyframe(keys, labels)
    return memory


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def linear(start: tuple[int, int], step: tuple[int, int], length: int) -> list[tuple[int, int]]:
    return [(start[0] + step[0] * t, start[1] + step[1] * t) for t in range(length)]


def test_crossing_objects_keep_their_ids() -> None:
    """Two same-shape objects cross (B passes over A); each id stays on its own object."""
    length = 26
    tracks = [Track(1, "stripes", linear((40, 8), (0, 4), length)), Track(2, "columns", linear((56, 120), (0, -4), length))]
    frames, truth = draw_clip(tracks)
    predicted = track_clip(frames, truth[0], [1, 2], class_indices=[0, 0])
    for object_id, other_id in ((1, 2), (2, 1)):
        scores = [iou(predicted[t] == object_id, truth[t] == object_id) for t in range(length)]
        full = [t for t in range(length) if (truth[t] == object_id).sum() == SIDE * SIDE]
        assert min(scores[t] for t in full) >= MIN_IOU_VISIBLE, (object_id, scores)
        assert np.mean(scores) >= MIN_MEAN_IOU, (object_id, scores)
        for t in range(length):  # never on the other object more than on its own
            own = np.logical_and(predicted[t] == object_id, truth[t] == object_id).sum()
            swapped = np.logical_and(predicted[t] == object_id, truth[t] == other_id).sum()
            assert own > swapped, (object_id, t, own, swapped)


def test_object_leaving_gets_empty_mask_and_is_found_again() -> None:
    """A leaves through the right edge, stays out longer than the memory holds, comes back."""
    out_frames = 10
    path = linear((48, 8), (0, 12), 14)  # leaves through the right edge (gone from t = 13)
    path += [(48, WIDTH + 8)] * out_frames
    path += linear((48, WIDTH - 8), (0, -8), 10)  # re-enters from the right, far from frame 0
    tracks = [Track(1, "stripes", path), Track(2, "columns", [(16, 16)] * len(path))]
    frames, truth = draw_clip(tracks, seed=1)
    memory = MemoryConfig(context=4)  # the object is gone from the recent frames when it returns
    predicted = track_clip(frames, truth[0], [1, 2], memory=memory, class_indices=[0, 0])
    gone = [t for t in range(len(path)) if not (truth[t] == 1).any()]
    assert len(gone) >= out_frames
    for t in gone:
        assert not (predicted[t] == 1).any(), f"frame {t}: mask of a departed object is not empty"
    back = [t for t in range(len(path)) if t > max(gone) and (truth[t] == 1).sum() == SIDE * SIDE]
    assert back, "the clip must show the object fully back"
    for t in back:
        assert iou(predicted[t] == 1, truth[t] == 1) >= MIN_IOU_VISIBLE, t
    for t in range(len(path)):
        assert iou(predicted[t] == 2, truth[t] == 2) >= MIN_IOU_VISIBLE, t


def test_distractor_of_same_shape_and_class_is_not_followed() -> None:
    """Only A is tracked; D (same shape, same class, other texture) passes right beside it."""
    length = 20
    tracks = [
        Track(1, "stripes", linear((48, 20), (0, 3), length)),
        Track(9, "checker", linear((90, 120), (0, -5), length)),  # 9: drawn, never tracked
    ]
    frames, truth = draw_clip(tracks, seed=2)
    first = np.where(truth[0] == 1, 1, 0).astype(np.uint8)
    predicted = track_clip(frames, first, [1], class_indices=[0])
    scores = [iou(predicted[t] == 1, truth[t] == 1) for t in range(length)]
    assert min(scores) >= MIN_IOU_VISIBLE and np.mean(scores) >= MIN_MEAN_IOU, scores
    on_distractor = [np.logical_and(predicted[t] == 1, truth[t] == 9).sum() for t in range(length)]
    # at most a boundary sliver where the two touch (one row of half-cells)
    assert max(on_distractor) <= SIDE * CELL // 2, on_distractor


def test_appearance_only_without_class_names() -> None:
    """With no class name (class index None) the appearance map alone drives the prior."""
    length = 12
    tracks = [Track(1, "stripes", linear((40, 20), (2, 6), length))]
    frames, truth = draw_clip(tracks, seed=3)
    predicted = track_clip(frames, truth[0], [1], class_indices=None)
    scores = [iou(predicted[t] == 1, truth[t] == 1) for t in range(length)]
    assert min(scores) >= MIN_IOU_VISIBLE, scores


def test_fuse_background_wins_for_an_absent_object() -> None:
    """Object 1 propagated nowhere: its min-maxed prior peaks at 1 but must not win there."""
    propagated = torch.zeros(3, 4, 4)
    propagated[0] = 1.0
    propagated[0, :2, :2] = 0.1
    propagated[2, :2, :2] = 0.9  # object 2 present at the top-left
    prior = torch.zeros(2, 4, 4)
    prior[0, 3, 3] = 1.0  # absent object's prior peak, in the background
    prior[1, :2, :2] = 1.0
    classes = fuse(propagated, prior, weight=0.5).argmax(0)
    assert int(classes[3, 3]) == 0
    assert (classes[:2, :2] == 2).all()
    assert not (classes == 1).any()


def test_fuse_suppresses_a_leak_the_prior_does_not_support() -> None:
    """Propagation leaks 60% of object 1 onto a cell its reference does not look like."""
    propagated = torch.zeros(2, 4, 4)
    propagated[1, :2, :2] = 0.9  # the object
    propagated[1, 3, 3] = 0.6  # the leak
    propagated[0] = 1 - propagated[1]
    prior = torch.full((1, 4, 4), 0.05)
    prior[0, :2, :2] = 0.8  # the object looks like its reference (not necessarily at 1)
    without_prior = fuse(propagated, prior, weight=0.0).argmax(0)
    with_prior = fuse(propagated, prior, weight=0.5).argmax(0)
    assert int(without_prior[3, 3]) == 1 and int(with_prior[3, 3]) == 0
    assert (with_prior[:2, :2] == 1).all()  # the object itself keeps all its cells


def test_memory_forgets_all_but_first_and_last_n_frames() -> None:
    """Reading after 10 writes equals reading a memory that only saw the last n of them."""
    torch.manual_seed(0)
    grid, channels, labels_count, n = (6, 8), 5, 3, 4
    cells = grid[0] * grid[1]
    config = MemoryConfig(context=n, context_topk=5, radius=30, max_keyframes=0)
    keys = torch.randn(11, channels, cells)
    labels = torch.softmax(torch.randn(11, labels_count, cells), dim=1)
    long_memory = first_frame_memory(config, keys[0], labels[0], grid)
    for t in range(1, 11):
        long_memory.write(keys[t], labels[t])
    short_memory = first_frame_memory(config, keys[0], labels[0], grid)
    for t in range(11 - n, 11):
        short_memory.write(keys[t], labels[t])
    query = torch.randn(channels, cells)
    assert long_memory.size == n + 1 and long_memory.keys.shape[0] == n + 1
    torch.testing.assert_close(long_memory.read(query), short_memory.read(query))


def test_memory_window_limits_recent_frames_but_not_the_first() -> None:
    """A perfect match outside the window is used from the first frame only (global)."""
    grid = (30, 30)
    cells = grid[0] * grid[1]
    radius = scaled_radius(MemoryConfig().radius, grid)
    far = cells - 1  # bottom-right cell; the query cell is the top-left one
    assert radius < grid[0] - 1
    keys = torch.zeros(2, cells)
    keys[0] = 1.0  # every cell: direction (1, 0)
    keys[:, far] = torch.tensor([0.0, 1.0])  # the far cell alone matches the query perfectly
    query = keys.clone()
    query[:, 0] = torch.tensor([0.0, 1.0])
    marked = torch.zeros(cells, dtype=torch.long)
    marked[far] = 1
    one_label = labels_to_grid(marked.view(grid), 2, grid)

    def read(global_first: bool, through_first: bool) -> float:
        config = MemoryConfig(context=2, context_topk=1, global_first_frame=global_first)
        background = labels_to_grid(torch.zeros(grid, dtype=torch.long), 2, grid)
        memory = first_frame_memory(config, keys, one_label if through_first else background, grid)
        memory.write(keys, background if through_first else one_label)
        return float(memory.read(query)[1, 0])

    assert read(global_first=True, through_first=True) == pytest.approx(1.0)
    assert read(global_first=False, through_first=True) == pytest.approx(0.0)
    assert read(global_first=True, through_first=False) == pytest.approx(0.0)


@pytest.mark.parametrize("search_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_memory_read_in_chunks_matches_one_pass(search_dtype: torch.dtype) -> None:
    """Bounding the affinity block (large grids) must not change the joint top-k result, nor
    must a half-precision first pass (the GPU's), nor keyframes beside the recent frames."""
    torch.manual_seed(1)
    grid, channels = (6, 7), 4
    cells = grid[0] * grid[1]
    config = MemoryConfig(context=5, context_topk=7, radius=8)
    memories = [ContextMemory(config, grid, channels, 3, torch.device("cpu"), dtype) for dtype in (torch.float32, search_dtype)]
    for step in range(7):
        keys, labels = torch.randn(channels, cells), torch.softmax(torch.randn(3, cells), 0)
        for memory in memories:
            (memory.add_keyframe if step in (0, 3) else memory.write)(keys, labels)
    query = torch.randn(channels, cells)
    whole = memories[0].read(query)
    memories[1].budget = 2 * cells * cells  # 2 frames a chunk
    torch.testing.assert_close(memories[1].read(query), whole)


class ErasingRefiner:
    """Stand-in SamRefiner: erases object 2 on the first frame it sees, then agrees with the
    coarse labels (argmax of the fused scores)."""

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, frames: np.ndarray) -> list[None]:
        return [None] * len(frames)

    def refine(self, image: np.ndarray, scores: torch.Tensor, embedding: None = None) -> torch.Tensor:
        self.calls += 1
        classes = scores.argmax(0)
        return torch.where(classes == 2, 0, classes) if self.calls == 1 else classes


def test_refined_labels_are_what_memory_remembers() -> None:
    """Step 5: the refined mask, not the coarse one, is frame t's label in the memory."""
    tracks = [Track(1, "stripes", [(40, 20)] * 4), Track(2, "columns", [(40, 100)] * 4)]
    frames, truth = draw_clip(tracks, seed=4)
    source = CellStatistics()
    areas = {}
    for name, refiner in (("coarse", None), ("refined", ErasingRefiner())):
        config = MemoryConfig(context=2, global_first_frame=False)
        propagator = Propagator(config, MatchConfig(), torch.device("cpu"), refiner)  # type: ignore[arg-type]
        propagator.add_keyframe(source(frames[:1]), truth[0], {1: 0, 2: 0})
        predicted = list(propagator.track(frames[1:], source(frames[1:])))
        areas[name] = [int((labels == 2).sum()) for labels in predicted]
    assert areas["coarse"][0] > 0.9 * SIDE * SIDE and areas["refined"][0] == 0
    # frame 2 sees frame 1 (object 2 erased) in its memory: much less of object 2 survives
    assert areas["refined"][1] < 0.5 * areas["coarse"][1], areas
