"""``Tracker``: the session API. Models load once; a state per video; masks at any frame;
results stream out of a generator (the shape of SAM 2's video predictor).

    tracker = Tracker(model="stabilityai/sdxl-turbo", sam="vit_b", device="cuda")
    state = tracker.init_state("video.mp4", classes=["dog"])
    tracker.add_mask(state, 0, labels)            # (H, W) uint8 object ids
    tracker.add_points(state, 30, obj_id=2, points=[(412, 230)], labels=[1])  # or clicks, boxes
    for frame_idx, labels in tracker.propagate(state):
        ...

Nothing here writes files: ``pdmtrack.runs.video_folder`` feeds the results to the writers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args, overload

import numpy as np
import torch
from typing_extensions import Unpack

from pdmtrack.config import FeatureKind, TrackOptions, TrackSettings
from pdmtrack.device import search_dtype
from pdmtrack.errors import ParameterError
from pdmtrack.features.batch_size import resolve_batch_size
from pdmtrack.features.composite import PriorComposite
from pdmtrack.features.dino import VitParts
from pdmtrack.features.extractor import distinct_names
from pdmtrack.features.model import DiffusionParts
from pdmtrack.features.types import FeatureSource, PDMFeatures
from pdmtrack.io.background import prefetched
from pdmtrack.io.masks import require_objects
from pdmtrack.io.video import FrameReader
from pdmtrack.sam.prompting import ObjectPrompt, PromptableBackend, segment_object
from pdmtrack.sam.refine import LOGIT_CLIP, FrameEmbedding, SamRefiner
from pdmtrack.tracking.models import Models, load_models
from pdmtrack.tracking.objects import ObjectScores, object_ids_in
from pdmtrack.tracking.prompts import EmbeddingCache, PromptBook, check_object_id, checked_prompt, merge_prompted, paint, with_more_clicks
from pdmtrack.tracking.propagator import Propagator, mask_from_class_names
from pdmtrack.tracking.two_way import merge_two_way

Classes = Sequence[str] | Mapping[int, str]
Direction = Literal["forward", "backward", "both"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)
TRACKING_STAGES = ("decode", "features", "matching", "refinement")  # what VideoState.stage_seconds holds
FEATURE_PREFETCH = 2  # feature batches computed ahead of the tracking loop


class StageClock:
    """Busy seconds per stage; a stage timed inside another counts for the inner one only. One
    clock per thread (the feature worker has its own): stages of different threads overlap."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self._nested: list[float] = []  # per open stage: seconds spent in stages nested in it

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        began = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - began
            self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed


class _TimedRefiner:
    """A refiner whose ``refine`` calls count as the "refinement" stage."""

    def __init__(self, refiner: SamRefiner, clock: StageClock) -> None:
        self._refiner, self._clock = refiner, clock

    def embed(self, frames: np.ndarray) -> list[FrameEmbedding]:
        with self._clock("refinement"):
            return self._refiner.embed(frames)

    def refine(self, frame: np.ndarray, scores: torch.Tensor, embedding: FrameEmbedding | None = None) -> torch.Tensor:
        with self._clock("refinement"):
            return self._refiner.refine(frame, scores, embedding)


class VideoState:
    """One video's session: its frames (streamed, never all in memory), its class names,
    its feature source, the masks given whole so far (frame index -> (H, W) uint8 ids), the
    prompts (clicks, boxes, the frames objects end at) and the SAM embeddings of the frames
    clicked last."""

    def __init__(self, reader: FrameReader, classes: Classes, source: FeatureSource) -> None:
        self.reader = reader
        self.classes = classes
        self.source = source
        self.masks: dict[int, np.ndarray] = {}
        self.prompts = PromptBook()
        self.embeddings = EmbeddingCache()
        self.stage_seconds: dict[str, float] = dict.fromkeys(TRACKING_STAGES, 0.0)

    @property
    def given_frames(self) -> list[int]:
        """The frames with a given mask (whole, or of clicked objects), ascending."""
        return sorted({*self.masks, *self.prompts.masks})

    def given_labels(self, frame_idx: int) -> np.ndarray | None:
        """The given label map of ``frame_idx`` (whole, or its clicked objects'), or None."""
        return self.masks.get(frame_idx, self.prompts.masks.get(frame_idx))

    @property
    def object_ids(self) -> list[int]:
        """The ids of every given mask, ascending."""
        return sorted({i for frame in self.given_frames for i in object_ids_in(self.given_labels(frame))})  # type: ignore[arg-type]

    @property
    def video(self) -> Path:
        return self.reader.path

    @property
    def num_frames(self) -> int:
        return self.reader.num_frames

    @property
    def frame_names(self) -> list[str]:
        return self.reader.frame_names

    @property
    def height(self) -> int:
        return self.reader.height

    @property
    def width(self) -> int:
        return self.reader.width

    @property
    def fps(self) -> float:
        return self.reader.fps

    @property
    def cached_frames(self) -> int:
        """Frames whose features came from the cache so far."""
        return int(getattr(self.source, "hits", 0))

    @property
    def computed_frames(self) -> int:
        """Frames whose features the feature source computed so far."""
        return int(getattr(self.source, "misses", 0))


def distinct_classes(classes: Classes) -> list[str]:
    """The distinct class names in order of first appearance (the feature source's prompt order)."""
    names = classes.values() if isinstance(classes, Mapping) else classes
    return distinct_names(names)


def class_rows(classes: Classes, object_ids: Sequence[int], where: str = "classes") -> dict[int, int | None]:
    """Per object id, the row of its class among the distinct names (None: no class).

    ``classes`` is a mapping {id: name} (every id among ``object_ids``), one name for every
    object, or one name per object in ascending id order; ``where`` names it in errors."""
    names = distinct_classes(classes)
    if isinstance(classes, Mapping):
        unknown = sorted(set(classes) - set(object_ids))
        if unknown:
            raise ParameterError(
                where,
                f"object id {unknown[0]} ('{classes[unknown[0]]}') is in no given mask (their ids: {', '.join(map(str, object_ids))})",
            )
        return {i: names.index(classes[i].strip()) if i in classes else None for i in object_ids}
    if not classes:
        return dict.fromkeys(object_ids)
    if len(classes) == 1:
        return dict.fromkeys(object_ids, 0)
    if len(classes) != len(object_ids):
        raise ParameterError(
            where,
            f"{len(classes)} class names for {len(object_ids)} objects (ids {', '.join(map(str, object_ids))}): "
            "give one name for all objects or one per object (in id order)",
        )
    return {i: names.index(name.strip()) for i, name in zip(sorted(object_ids), classes)}


def check_custom_sources(settings: TrackSettings, features: FeatureSource | None, prior: FeatureSource | None) -> None:
    """ParameterError when custom sources meet settings that cannot use them: PDM's prior
    needs the diffusion model a custom source replaces, and only the pdmtrack protocol has
    an instance prior."""
    if features is not None and settings.source.instance_prior == "pdm":
        raise ParameterError("instance_prior", "pdm needs the diffusion model, which features= replaces; give prior=SOURCE instead")
    if prior is not None and settings.memory.protocol != "pdmtrack":
        problem = f"the {settings.memory.protocol} protocol propagates labels without an instance prior; use it with protocol='pdmtrack'"
        raise ParameterError("prior", problem)


class Tracker:
    """Zero-shot instance tracker: the diffusion model and SAM loaded once, any number of videos.

    ``Tracker(**options)`` takes the CLI's option names (``model``, ``sam``, ``sam_checkpoint``,
    ``device``, ``dtype``, ``inversion``, ``size``, ``batch_size``, ``cache_dir``, ``context``,
    ...: see ``TrackSettings.from_options``) or ``settings=TrackSettings(...)``. ``features``
    replaces the features by any source mapping (B, H, W, 3) uint8 RGB frames to a
    ``PDMFeatures`` record; then no feature model is loaded (a name, ``features="dinov3"``, is
    the option). ``prior`` (with ``features``)
    is a second such source the instance prior is computed from, on its own grid (resampled to
    the appearance grid): the composite of ``instance_prior="pdm"``, with any two sources.
    """

    def __init__(
        self,
        settings: TrackSettings | None = None,
        *,
        features: FeatureSource | FeatureKind | None = None,
        prior: FeatureSource | None = None,
        **options: Unpack[TrackOptions],
    ) -> None:
        if isinstance(features, str):  # the features option (a name), not a custom source
            options["features"] = features
            features = None
        if settings is not None and options:
            raise TypeError("give either settings=TrackSettings(...) or option names, not both")
        if prior is not None and features is None:
            raise TypeError("prior= takes a custom source beside features=...; for PDM's prior give instance_prior='pdm'")
        self.settings = settings if settings is not None else TrackSettings.from_options(**options)
        check_custom_sources(self.settings, features, prior)
        self.models: Models = load_models(self.settings, features=features is None)
        self._custom_features = features if prior is None or features is None else PriorComposite(features, prior)

    @property
    def device(self) -> torch.device:
        return self.models.device

    @property
    def parts(self) -> DiffusionParts | None:
        """The diffusion model's parts (None with ``features="dinov2"``/``"dinov3"`` alone, or custom features)."""
        return self.models.parts

    @property
    def vit(self) -> VitParts | None:
        """The DINO ViT of ``features="dinov2"`` or ``"dinov3"`` (None otherwise)."""
        return self.models.vit

    @property
    def refiner(self) -> SamRefiner | None:
        """SAM (None with ``sam="none"``)."""
        return self.models.refiner

    def feature_source(self, classes: Classes = (), task: str = "video") -> FeatureSource:
        """The features of this tracker for a prompt naming ``classes`` (cached on disk unless
        ``no_cache``); a custom ``features`` source is returned as it is. ``task`` (video or
        image) picks DIFT's published timestep and up-block for ``features="dift"``."""
        if self._custom_features is not None:
            return self._custom_features
        return self.models.feature_source(distinct_classes(classes), task)

    def init_state(self, video: str | Path | FrameReader, classes: Classes | None = None) -> VideoState:
        """A session over ``video`` (a file, a folder of frames, or an open ``FrameReader``).
        ``classes``: one name for all objects, one per object in id order, or {id: name}."""
        reader = video if isinstance(video, FrameReader) else FrameReader(video, self.settings.runtime.backend)
        classes = classes or []
        return VideoState(reader, classes, self.feature_source(classes))

    def add_mask(self, state: VideoState, frame_idx: int, labels: np.ndarray) -> None:
        """Give the objects' mask at ``frame_idx`` ((H, W) object ids 0..255, 0 = background;
        integers, or floats holding whole numbers). It is the output at that frame, a permanent
        reference from then on, and the whole truth there: ids it adds are tracked from it,
        tracked ids it lacks end at it. It replaces the frame's earlier mask and clicks. A
        running ``propagate`` generator takes it when it reaches ``frame_idx`` (a frame it has
        already passed waits for the next pass)."""
        if not 0 <= frame_idx < state.num_frames:
            raise ParameterError("frame_idx", f"{frame_idx} is outside the video's frames 0..{state.num_frames - 1}")
        labels = np.asarray(labels)
        if labels.dtype.kind not in "buif":
            raise ParameterError("labels", f"frame {frame_idx}: expected an array of object ids, got dtype {labels.dtype}")
        if labels.shape != (state.height, state.width):
            got = "x".join(map(str, labels.shape[::-1]))
            raise ParameterError("labels", f"frame {frame_idx}: mask is {got}, the video is {state.width}x{state.height}")
        if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
            value = labels.flat[int(np.argmax(labels != np.round(labels)))]
            raise ParameterError(
                "labels",
                f"frame {frame_idx}: a float mask must hold whole object ids, got {value} "
                "(for probabilities, threshold first: (mask > 0.5).astype(np.uint8))",
            )
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ParameterError("labels", f"frame {frame_idx}: object ids must lie in 0..255")
        require_objects(labels, f"mask (frame {frame_idx})")
        state.masks[int(frame_idx)] = labels.astype(np.uint8, copy=True)
        state.prompts.forget(int(frame_idx))  # the mask replaces the frame's clicks
        state.prompts.masks.pop(int(frame_idx), None)

    def add_points(
        self,
        state: VideoState,
        frame_idx: int,
        obj_id: int,
        points: Sequence[Sequence[float]] | np.ndarray,
        labels: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Click object ``obj_id`` (1..255) at ``frame_idx``: ``points`` (x, y) in the video's
        pixels, ``labels`` 1 on the object, 0 not on it (default all 1). SAM turns the
        object's clicks at that frame so far (and its box) into its mask there, the previous
        click's low-res logits as mask input (SAM's interactive loop); the mask goes into the
        frame's given mask, the other objects keeping their pixels except where it now lies,
        and is a permanent reference from then on, as ``add_mask`` makes one. On a frame where
        only clicks were given, the objects not clicked there are tracked through it. Returns
        the frame's whole given (H, W) uint8 label map. Needs a SAM model (``sam``)."""
        return self._prompt(state, frame_idx, obj_id, points, labels, None)

    def add_box(
        self,
        state: VideoState,
        frame_idx: int,
        obj_id: int,
        box: Sequence[float] | np.ndarray,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """``add_points`` with a box (x0, y0, x1, y1) in the video's pixels (it replaces the
        object's earlier box at that frame), and optionally clicks with it."""
        if box is None:
            raise ParameterError("box", "add_box needs a box (x0, y0, x1, y1); for clicks alone use add_points")
        return self._prompt(state, frame_idx, obj_id, points, labels, box)

    def add_object_mask(self, state: VideoState, frame_idx: int, obj_id: int, mask: np.ndarray) -> np.ndarray:
        """Give object ``obj_id``'s mask at ``frame_idx`` ((H, W) bool, or 0/1 numbers; SAM 2's
        ``add_new_mask``): merged into the frame's given mask as a click's mask is (the other
        objects keep their pixels except where it lies), its clicks there forgotten. A brush
        stroke, or a mask drawn in another tool. Returns the frame's whole given label map."""
        check_frame("frame_idx", frame_idx, state.num_frames)
        frame_idx, obj_id = int(frame_idx), check_object_id(obj_id)
        mask = np.asarray(mask)
        if mask.shape != (state.height, state.width):
            got = "x".join(map(str, mask.shape[::-1]))
            raise ParameterError("mask", f"frame {frame_idx}: mask is {got}, the video is {state.width}x{state.height}")
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise ParameterError("mask", f"frame {frame_idx}: expected a bool or 0/1 mask of object {obj_id}")
        given = state.given_labels(frame_idx)
        painted = paint(given if given is not None else np.zeros((state.height, state.width), np.uint8), obj_id, mask.astype(bool))
        state.prompts.forget(frame_idx, obj_id)
        state.prompts.clicks[(frame_idx, obj_id)] = ObjectPrompt()  # given at this frame, by its mask
        (state.masks if frame_idx in state.masks else state.prompts.masks)[frame_idx] = painted
        return painted.copy()

    def _prompt(
        self,
        state: VideoState,
        frame_idx: int,
        obj_id: int,
        points: Sequence[Sequence[float]] | np.ndarray | None,
        labels: Sequence[int] | np.ndarray | None,
        box: Sequence[float] | np.ndarray | None,
    ) -> np.ndarray:
        """A prompt checked, decoded by SAM and painted into its frame's given mask."""
        backend = self._promptable()
        check_frame("frame_idx", frame_idx, state.num_frames)
        frame_idx, obj_id = int(frame_idx), check_object_id(obj_id)
        key = (frame_idx, obj_id)
        prompt = with_more_clicks(state.prompts.clicks.get(key), checked_prompt(points, labels, box, state.width, state.height))
        embedding = state.embeddings.get(frame_idx, lambda: backend.embed(state.reader.read(frame_idx)[None])[0])
        given = state.given_labels(frame_idx)
        mask_input = state.prompts.logits.get(key)
        if mask_input is None and given is not None and bool((given == obj_id).any()):  # refine the object's given mask
            log_odds = torch.where(torch.from_numpy(given == obj_id), LOGIT_CLIP, -LOGIT_CLIP)[None]
            mask_input = backend.mask_input(log_odds)[0]
        result = segment_object(backend, embedding, prompt, mask_input)
        painted = paint(given if given is not None else np.zeros((state.height, state.width), np.uint8), obj_id, result.mask)
        state.prompts.clicks[key], state.prompts.logits[key] = prompt, result.logits
        (state.masks if frame_idx in state.masks else state.prompts.masks)[frame_idx] = painted
        return painted.copy()

    def _promptable(self) -> PromptableBackend:
        """The SAM backend that turns clicks and boxes into masks (ParameterError without one)."""
        if self.refiner is None:
            raise ParameterError("sam", "points and boxes need a SAM model: set sam (e.g. vit_b or sam2.1-hiera-tiny), not none")
        return self.refiner.backend  # type: ignore[return-value]

    def clear_prompts(self, state: VideoState, frame_idx: int, obj_id: int) -> np.ndarray:
        """Forget object ``obj_id``'s clicks and box at ``frame_idx`` and take its pixels out of
        that frame's given mask (a given mask left with no object is dropped). Returns the
        frame's given label map (zeros when none is left)."""
        check_frame("frame_idx", frame_idx, state.num_frames)
        frame_idx, obj_id = int(frame_idx), check_object_id(obj_id)
        if (frame_idx, obj_id) not in state.prompts.clicks:
            raise ParameterError("obj_id", f"object {obj_id} has no clicks or box at frame {frame_idx}")
        state.prompts.forget(frame_idx, obj_id)
        _erase(state, frame_idx, obj_id)
        given = state.given_labels(frame_idx)
        return given.copy() if given is not None else np.zeros((state.height, state.width), np.uint8)

    def remove_object(self, state: VideoState, obj_id: int, from_frame: int | None = None) -> None:
        """End object ``obj_id``: everywhere (``from_frame`` None, or at or before its first
        given frame), or from ``from_frame`` on: its given pixels and clicks there go, and
        forward tracking drops it at that frame. Results already yielded are not touched."""
        obj_id = check_object_id(obj_id)
        frames = [frame for frame in state.given_frames if bool((state.given_labels(frame) == obj_id).any())]
        frames += [frame for frame, clicked in state.prompts.clicks if clicked == obj_id]
        if not frames:
            known = ", ".join(map(str, state.object_ids)) or "none"
            raise ParameterError("obj_id", f"object {obj_id} is in no given mask or prompt (objects: {known})")
        if from_frame is not None:
            check_frame("from_frame", from_frame, state.num_frames)
        everywhere = from_frame is None or from_frame <= min(frames)
        first = min(frames) if everywhere else int(from_frame)  # type: ignore[arg-type]
        for frame in sorted(set(frames)):
            if frame >= first:
                state.prompts.forget(frame, obj_id)
                _erase(state, frame, obj_id)
        if everywhere:
            state.prompts.ends.pop(obj_id, None)
        else:
            state.prompts.ends[obj_id] = first

    def reset_state(self, state: VideoState) -> None:
        """Forget every given mask, prompt and object end: ``state`` is as ``init_state`` made it
        (the SAM embeddings of clicked frames stay cached)."""
        state.masks.clear()
        state.prompts = PromptBook()

    @overload
    def propagate(self, state: VideoState, start: int | None = None, end: int | None = None, direction: Direction = "forward",
                  with_scores: Literal[False] = False) -> Iterator[tuple[int, np.ndarray]]: ...  # fmt: skip

    @overload
    def propagate(self, state: VideoState, start: int | None = None, end: int | None = None, direction: Direction = "forward", *,
                  with_scores: Literal[True]) -> Iterator[tuple[int, np.ndarray, ObjectScores]]: ...  # fmt: skip

    def propagate(
        self,
        state: VideoState,
        start: int | None = None,
        end: int | None = None,
        direction: Direction = "forward",
        with_scores: bool = False,
    ) -> Iterator[tuple[int, np.ndarray]] | Iterator[tuple[int, np.ndarray, ObjectScores]]:
        """Yield (frame index, (H, W) uint8 object ids) frame by frame; the arguments are
        checked at the call.

        ``forward``: ``start, start + 1, ...`` up to ``end`` (exclusive; default the last
        frame); ``start`` defaults to the first given mask. ``backward``: ``start, start - 1,
        ...`` down to ``end`` (exclusive; default -1, i.e. down to frame 0); ``start``
        defaults to the last given mask. Without any mask the objects come from the class
        names at ``start`` (default 0; forward only), object k being the k-th distinct name.
        ``both``: every frame of ``[start, end)`` (default the whole video) in ascending
        order, each from the nearer given mask before or after it (see ``two_way``).

        Given masks met on the way are taken as they are (corrections), also those added with
        ``add_mask`` or clicks while this generator runs, for frames it has not yielded yet.
        ``with_scores`` (forward or backward) yields (frame index, labels, ``ObjectScores``):
        each object's score map as well, what the labels were chosen from."""
        if direction not in DIRECTIONS:
            raise ParameterError("direction", f"unknown value '{direction}' (choose from {', '.join(DIRECTIONS)})")
        if direction == "both":
            if with_scores:
                raise ParameterError("with_scores", "scores come with forward or backward passes, not 'both' (run the two passes)")
            return self._both_ways(state, start, end)
        reverse = direction == "backward"
        results = self._one_way(state, *self._range(state, start, end, reverse), reverse, with_scores)
        return results if with_scores else ((frame_idx, labels) for frame_idx, labels, _ in results)  # type: ignore[return-value]

    def _both_ways(self, state: VideoState, start: int | None, end: int | None) -> Iterator[tuple[int, np.ndarray]]:
        """``propagate(direction="both")``: a backward pass from the last given mask of the range
        down to its start, a forward pass from its first given mask, merged in frame order."""
        if not state.given_frames:
            raise ParameterError("direction", "'both' needs a given mask to track from (add_mask, add_points or add_box)")
        low = 0 if start is None else start
        check_frame("start", low, state.num_frames)
        stop = state.num_frames if end is None else end
        check_stop(stop, low, state.num_frames)
        keyframes = [frame for frame in state.given_frames if low <= frame < stop]
        if not keyframes:
            raise ParameterError("start", f"no mask is given inside the frame range {low}..{stop - 1}")

        def one_way(first: int, stop: int, reverse: bool) -> Iterator[tuple[int, np.ndarray]]:
            return ((frame_idx, labels) for frame_idx, labels, _ in self._one_way(state, first, stop, reverse))

        return merge_two_way(one_way(keyframes[-1], low - 1, True), lambda: one_way(keyframes[0], stop, False), keyframes, low)

    def _one_way(
        self, state: VideoState, start: int, stop: int, reverse: bool, with_scores: bool = False
    ) -> Iterator[tuple[int, np.ndarray, ObjectScores | None]]:
        """One pass from ``start`` to ``stop`` (exclusive), checked by ``_range``."""
        clock = StageClock(state.stage_seconds)
        refiner = _TimedRefiner(self.refiner, clock) if self.refiner is not None else None
        half = search_dtype(self.device, self.models.dtype)
        propagator = Propagator(self.settings.memory, self.settings.match, self.device, refiner, half)  # type: ignore[arg-type]
        from_classes: dict[int, np.ndarray] = {}  # the first mask, from the class names when none is given
        rows, rows_of = (self._class_rows(state), self._masks_key(state)) if state.given_frames else ({}, ())
        low, high = (stop + 1, start + 1) if reverse else (start, stop)
        batch_size = self.batch_size(state)
        prepared = prefetched(lambda: self._featurize(state, batch_size, low, high, reverse), FEATURE_PREFETCH, "pdmtrack-features")

        def given(frame_idx: int) -> np.ndarray | None:  # read live: add_mask and clicks may add masks meanwhile
            labels = state.given_labels(frame_idx)
            return labels if labels is not None else from_classes.get(frame_idx)

        def breaks(frame_idx: int) -> bool:  # a run of tracked frames stops before it
            return given(frame_idx) is not None or (not reverse and bool(state.prompts.ending_at(frame_idx)))

        try:
            for indices, frames, features in prepared:
                position = 0
                while position < len(indices):
                    frame_idx = indices[position]
                    if not reverse:  # remove_object(from_frame=frame_idx)
                        propagator.end_objects(state.prompts.ending_at(frame_idx))
                    if frame_idx == start and not state.given_frames:
                        with clock("matching"):
                            from_classes[start] = self._mask_from_classes(frames[position], features.select(position))
                    labels = given(frame_idx)
                    if labels is not None:
                        keep: list[int] = []
                        if frame_idx in state.prompts.masks and frame_idx not in state.masks and propagator.tracking:
                            # only some objects were clicked here: the others are tracked through it
                            tracked = next(self._track_span(propagator, indices, frames, features, [position], clock, False))[1]
                            clicked = state.prompts.objects_at(frame_idx)
                            keep = [i for i in propagator.objects.ids if i not in clicked]
                            labels = merge_prompted(tracked, labels, clicked)
                        if not state.given_frames:
                            rows = {i: i - 1 for i in object_ids_in(labels)}
                        elif self._masks_key(state) != rows_of:  # add_mask or a click gave one meanwhile
                            rows, rows_of = self._class_rows(state), self._masks_key(state)
                        with clock("matching"):
                            propagator.add_keyframe(features.select(position), labels, rows, keep)
                        yield frame_idx, labels, propagator.objects.one_hot(labels) if with_scores else None
                        position += 1
                        continue
                    # track up to the next given mask (or object end) of the batch, until one is given on the way
                    span = list(range(position, len(indices)))
                    span = span[: next((k for k, p in enumerate(span) if k and breaks(indices[p])), len(span))]
                    tracked = self._track_span(propagator, indices, frames, features, span, clock, with_scores)
                    for position in span:
                        yield next(tracked)
                        if any(given(indices[p]) is not None for p in span if p > position):
                            break
                    tracked.close()
                    position += 1
        finally:
            prepared.close()  # stops the feature and decode threads at once

    @staticmethod
    def _masks_key(state: VideoState) -> tuple[tuple[int, int], ...]:
        """Which masks ``state`` holds (add_mask and clicks store a new array each time)."""
        return tuple((frame_idx, id(state.given_labels(frame_idx))) for frame_idx in state.given_frames)

    @staticmethod
    def _class_rows(state: VideoState) -> dict[int, int | None]:
        """Per object id of the given masks, the row of its class (see ``class_rows``)."""
        return class_rows(state.classes, state.object_ids)

    def batch_size(self, state: VideoState) -> int:
        """Frames per feature batch for ``state``'s video (``--batch-size auto`` resolved: from
        free GPU memory with this tracker's extractor at the video's frame size)."""
        probe = getattr(state.source, "probe", None)  # a custom feature source may offer none
        return resolve_batch_size(self.settings.runtime.batch_size, self.device, probe, (state.height, state.width))

    def _featurize(
        self, state: VideoState, batch_size: int, low: int, high: int, reverse: bool
    ) -> Iterator[tuple[list[int], np.ndarray, PDMFeatures]]:
        """(frame indices, frames, features) per batch; ``propagate`` runs it in a worker thread
        (on CUDA on a stream of its own), so the next batch's features are computed while the
        tracking loop works on this one."""
        clock = StageClock(state.stage_seconds)  # this thread's own: "decode" and "features"
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        batches = state.reader.batches(batch_size, low, high, reverse=reverse)
        try:
            while True:
                with clock("decode"):
                    batch = next(batches, None)
                if batch is None:
                    return
                indices, frames = batch
                with clock("features"), torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    features = state.source(frames)
                    if stream is not None:  # the tracking loop uses them on its own stream
                        stream.synchronize()
                        features = features.pin_memory() if features.appearance.device.type == "cpu" else features
                yield indices, frames, features
        finally:
            batches.close()

    def _track_span(
        self,
        propagator: Propagator,
        indices: list[int],
        frames: np.ndarray,
        features: PDMFeatures,
        span: list[int],
        clock: StageClock,
        with_scores: bool,
    ) -> Iterator[tuple[int, np.ndarray, ObjectScores | None]]:
        """Track the batch positions ``span`` (consecutive, no given mask among them)."""
        if not span:
            return
        chunk, chunk_features = frames[span[0] : span[-1] + 1], features.select(slice(span[0], span[-1] + 1))
        results = propagator.track_scored(chunk, chunk_features) if with_scores else propagator.track(chunk, chunk_features)
        for position in span:
            with clock("matching"):
                result = next(results)
            yield (indices[position], *result) if with_scores else (indices[position], result, None)  # type: ignore[misc]

    def _mask_from_classes(self, frame: np.ndarray, features: PDMFeatures) -> np.ndarray:
        """The first frame's objects from the class names, on whichever record (the prior's
        first: PDM's in the composite) carries class attention."""
        attending = features.prior_features if features.prior_features.class_attention is not None else features
        try:
            return mask_from_class_names(frame, attending, self.settings.match.tau, self.device, self.refiner)
        except ValueError as err:
            raise ParameterError("classes", f"{err}; give a mask") from None

    @staticmethod
    def _range(state: VideoState, start: int | None, end: int | None, reverse: bool) -> tuple[int, int]:
        """(first frame, frame to stop before) of a pass, checked against the video and the masks."""
        last, given = state.num_frames - 1, state.given_frames
        if start is None:
            start = (given[-1] if reverse else given[0]) if given else (last if reverse else 0)
        check_frame("start", start, state.num_frames)
        if given:
            check_has_mask(start, given)
        elif not distinct_classes(state.classes):
            raise ParameterError(
                "masks", "give a mask (add_mask or clicks: add_points, add_box), class names (init_state's classes) or both"
            )
        stop = (-1 if reverse else state.num_frames) if end is None else end
        if reverse and not -1 <= stop < start:
            raise ParameterError("end", f"{stop} must lie before start {start} when tracking backwards")
        if not reverse:
            check_stop(stop, start, state.num_frames)
        return start, stop


def _erase(state: VideoState, frame_idx: int, obj_id: int) -> None:
    """Take ``obj_id`` out of ``frame_idx``'s given mask; drop a mask left with no object and no clicks."""
    for masks in (state.masks, state.prompts.masks):
        if frame_idx in masks:
            labels = np.where(masks[frame_idx] == obj_id, 0, masks[frame_idx]).astype(np.uint8)
            masks[frame_idx] = labels
            if not labels.any() and not state.prompts.objects_at(frame_idx):
                del masks[frame_idx]


def check_frame(name: str, frame: int, num_frames: int) -> None:
    """ParameterError ``name`` unless ``frame`` is one of the video's frames."""
    if not 0 <= frame < num_frames:
        raise ParameterError(name, f"{frame} is outside the video's frames 0..{num_frames - 1}")


def check_stop(stop: int, start: int, num_frames: int) -> None:
    """ParameterError ``end`` unless a forward range from ``start`` can stop before ``stop``."""
    if not start < stop <= num_frames:
        raise ParameterError("end", f"{stop} must lie after start {start} and at most {num_frames} (the frame count)")


def check_has_mask(frame: int, masks: Collection[int]) -> None:
    """ParameterError ``start`` unless a mask is given at ``frame``."""
    if frame not in masks:
        given = ", ".join(map(str, sorted(masks)))
        raise ParameterError("start", f"frame {frame} has no mask (masks were given at frames {given})")
