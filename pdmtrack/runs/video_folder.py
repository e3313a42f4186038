"""One video into an output folder: the writer side of ``Tracker.propagate``.

``plan_video`` checks every input (video, masks, class names, frame range, output folder)
before any model is loaded; ``track_to_folder`` runs a plan with a loaded ``Tracker`` and
feeds the PNG, overlay and RLE writers in frame order. The CLI, ``eval davis`` and the
benchmarks all go through these two. The tracking decisions (directions, the two-way
merge) are the Tracker's; a backward run's results, which come last frame first, are
written in frame order once the pass is done (``two_way.in_frame_order``).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.io.background import BackgroundCalls
from pdmtrack.io.exports import check_format, check_target, default_target, open_export
from pdmtrack.io.files import check_not_in_use, check_output_folder, ensure_writable_folder, folder_lock, remove_stale_temporaries
from pdmtrack.io.masks import fit_mask_to_frame, read_mask
from pdmtrack.io.prompt_files import Prompt
from pdmtrack.io.video import FrameReader
from pdmtrack.io.writers import MaskPngWriter, OverlayWriter, RleJsonWriter, write_palette_png
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig
from pdmtrack.ovdiff.first_frame import ovdiff_objects
from pdmtrack.runs import record as run_record
from pdmtrack.runs.export_folder import export_info
from pdmtrack.tracking.objects import object_ids_in
from pdmtrack.tracking.prompts import check_object_id, checked_prompt
from pdmtrack.tracking.tracker import (
    DIRECTIONS,
    TRACKING_STAGES,
    Classes,
    Tracker,
    VideoState,
    check_frame,
    check_has_mask,
    check_stop,
    class_rows,
    distinct_classes,
)
from pdmtrack.tracking.two_way import in_frame_order

# TrackSummary.stage_seconds: busy seconds per stage. Writing runs in its own thread (overlapped
# with tracking); "writing_wait" is what it cost the tracking loop (a full queue, the final drain).
RUN_STAGES = (*TRACKING_STAGES, "writing", "writing_wait")
WRITE_QUEUE = 16  # frames the tracking loop may run ahead of the writer thread
FIRST_FRAME_MASK = "first_frame_mask.png"  # written when the first mask comes from class names or clicks
_FRAME_SPEC = re.compile(r"^(\d+):(.+)$")
# A given mask inside -o would be replaced by the output of its frame (a correction of a run's
# output is a copy of it, passed from outside the folder).
_MASK_INSIDE_HINT = "copy the mask out of it first (e.g. cp OUT/00002.png fixed.png, then --mask 2:fixed.png) or choose another -o"


@dataclass
class TrackSummary:
    """What a run did: frames written, wall seconds, frames/s, outputs, time per stage."""

    frames: int
    seconds: float
    fps: float
    out_dir: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # messages for the user (mask mapping, ...)
    cached_frames: int = 0  # frames whose features came from the cache
    computed_frames: int = 0  # frames whose features the feature source computed


@dataclass
class VideoPlan:
    """The checked inputs of one run: masks fitted to the video, the output frame range."""

    video: Path
    out_dir: Path
    reader: FrameReader
    masks: dict[int, np.ndarray]  # frame index -> (H, W) uint8 object ids
    classes: Classes
    start: int  # first frame written
    end: int  # frame written last + 1
    direction: str
    png: bool = True
    overlay: bool = True
    rle: bool = False
    notes: list[str] = field(default_factory=list)
    overwrite: bool = False  # replace another run's outputs in out_dir (see run_record)
    initialised: bool = False  # the start frame's mask came from an initialiser (OVDiff), not the user
    prompts: list[Prompt] = field(default_factory=list)  # clicks, boxes and mask entries, given in this order
    prompt_masks: dict[int, np.ndarray] = field(default_factory=dict)  # index in prompts -> a mask entry's labels
    exports: tuple[str, ...] = ()  # export formats written into out_dir/exports/ (pdmtrack.io.exports)

    @property
    def given_frames(self) -> list[int]:
        """The frames with a given mask or prompts, ascending."""
        return sorted({*self.masks, *(prompt.frame for prompt in self.prompts if prompt.gives_mask)})

    @property
    def object_ids(self) -> list[int]:
        """Every object id the run may write."""
        if not self.given_frames:
            return list(range(1, len(distinct_classes(self.classes)) + 1))
        given = [*self.masks.values(), *self.prompt_masks.values()]
        return sorted({i for labels in given for i in object_ids_in(labels)} | {p.obj_id for p in self.prompts if p.obj_id is not None})

    @property
    def first_mask_made(self) -> bool:
        """Whether the start frame's mask is made by the run (from class names, OVDiff or
        clicks) rather than read from a file: it is written to first_frame_mask.png."""
        return self.initialised or self.start not in self.masks and (not self.given_frames or self.start in self.given_frames)


def mask_files(specs: Sequence[str | Path], default_frame: int) -> dict[int, Path]:
    """``--mask`` values -> {frame: file}: ``FILE`` is the mask of ``default_frame``,
    ``FRAME:FILE`` the mask of frame FRAME (an existing file named like that stays a file)."""
    files: dict[int, Path] = {}
    for spec in specs:
        match = _FRAME_SPEC.match(str(spec))
        frame, path = (int(match[1]), Path(match[2])) if match and not Path(spec).exists() else (default_frame, Path(spec))
        if frame in files:
            raise ParameterError("masks", f"two masks for frame {frame} ({files[frame]}, {path})")
        files[frame] = path
    return files


def plan_video(
    video: str | Path,
    out_dir: str | Path,
    *,
    masks: Mapping[int, str | Path] | None = None,
    prompts: Sequence[Prompt] = (),
    classes: Sequence[str] = (),
    start: int | None = None,
    end: int | None = None,
    direction: str = "forward",
    resize_mask: bool = False,
    png: bool = True,
    overlay: bool = True,
    rle: bool = False,
    exports: Sequence[str] = (),
    backend: str = "auto",
    settings: TrackSettings | None = None,
    overwrite: bool = False,
) -> VideoPlan:
    """Check a run's inputs (InputError on the first problem); loads no model. ``prompts``:
    clicks and boxes (``io.prompt_files``), turned into masks by SAM when the run starts.

    The output folder must be writable, not in use by another run, apart from the inputs
    (a given mask inside it would be replaced: refused, saying how to correct a run's
    output) and hold no other run's outputs (checked against its run record with
    ``settings`` when given) unless ``overwrite``; see ``run_record``. Nothing is created."""
    out_dir = check_output_folder(out_dir, [video])
    check_output_folder(out_dir, (masks or {}).values(), _MASK_INSIDE_HINT)
    if any(not name.strip() for name in classes):
        raise ParameterError("classes", "a class name is empty")
    for export_format in exports:  # the run's own exports: a rerun rewrites them
        check_format("exports", export_format)
        check_target(default_target(out_dir, export_format), export_format, overwrite=True)
    if direction not in DIRECTIONS:
        raise ParameterError("direction", f"unknown value '{direction}' (choose from {', '.join(DIRECTIONS)})")
    reader = FrameReader(video, backend)
    if start is not None:
        check_frame("start", start, reader.num_frames)
    fitted, notes = {}, []
    for frame, path in sorted((masks or {}).items()):
        if not 0 <= frame < reader.num_frames:
            raise InputError(path, f"given for frame {frame}, outside the video's frames 0..{reader.num_frames - 1}")
        mask = fit_mask_to_frame(read_mask(path), path, reader.height, reader.width, resize_mask, reader.rotation)
        fitted[frame] = mask.labels
        notes += [mask.note] if mask.note else []
    if any(prompt.mask is None and prompt.gives_mask for prompt in prompts) and settings is not None and settings.sam.model_type == "none":
        raise ParameterError("sam", "clicks and boxes need a SAM model: set --sam (e.g. vit_b or sam2.1-hiera-tiny), not none")
    prompt_masks = {index: _prompt_mask(prompt, reader, resize_mask) for index, prompt in enumerate(prompts) if prompt.mask is not None}
    for prompt in prompts:
        _check_prompt(prompt, reader)
    given = {**dict.fromkeys(prompt.frame for prompt in prompts if prompt.gives_mask), **fitted}
    if not given and not distinct_classes(classes):
        raise ParameterError("masks", "give a first-frame mask, clicks or a box, a class name, or several of these")
    if not given and direction != "forward":
        raise ParameterError("direction", f"'{direction}' needs a given mask (or clicks) to track from")
    first, last = _output_range(given, start, end, direction, reader.num_frames)
    plan = VideoPlan(
        Path(video), out_dir, reader, fitted, _classes(classes, prompts), first, last, direction, png, overlay, rle, notes, overwrite,
        prompts=list(prompts), prompt_masks=prompt_masks, exports=tuple(dict.fromkeys(exports)),
    )  # fmt: skip
    class_rows(plan.classes, plan.object_ids)  # checks the number of class names
    ensure_writable_folder(out_dir, keep=False)
    check_not_in_use(out_dir)
    # Without given masks the first-frame objects are not known yet (class names, OVDiff):
    # track_to_folder checks again with them, before writing anything.
    run_record.check_reuse(out_dir, _record(plan, settings, known_masks=bool(given)), overwrite)
    return plan


def _check_prompt(prompt: Prompt, reader: FrameReader) -> None:
    """InputError naming where ``prompt`` was written unless it fits the video."""
    try:
        check_frame("frame", prompt.frame, reader.num_frames)
        if prompt.obj_id is not None:
            check_object_id(prompt.obj_id)
        if prompt.mask is None and prompt.gives_mask:
            checked_prompt(prompt.points, prompt.labels, prompt.box, reader.width, reader.height)
    except ParameterError as err:
        raise InputError(prompt.source, f"{err.parameter}: {err.problem}") from None


def _prompt_mask(prompt: Prompt, reader: FrameReader, resize_mask: bool) -> np.ndarray:
    """The labels of a mask entry's file, fitted to the video (InputError naming the file)."""
    assert prompt.mask is not None
    return fit_mask_to_frame(read_mask(prompt.mask), prompt.mask, reader.height, reader.width, resize_mask, reader.rotation).labels


def _classes(classes: Sequence[str], prompts: Sequence[Prompt]) -> Classes:
    """The run's class names: ``classes``, or the prompts' ``cls`` per object id."""
    named = [prompt for prompt in prompts if prompt.cls]
    if not named:
        return list(classes)
    if classes:
        raise ParameterError(
            "classes", f"{named[0].source} names a class (cls) too: give class names in the prompts or with --cls, not both"
        )
    by_object: dict[int, str] = {}
    for prompt in named:
        if by_object.setdefault(prompt.obj_id, prompt.cls) != prompt.cls:  # type: ignore[arg-type]
            raise InputError(
                prompt.source, f"object {prompt.obj_id} is '{by_object[prompt.obj_id]}' in an earlier entry, not '{prompt.cls}'"
            )
    return by_object


def _record(plan: VideoPlan, settings: TrackSettings | None, known_masks: bool = True) -> dict:
    """The identity of ``plan``'s run for its folder's run record."""
    return run_record.describe(
        video=plan.video, start=plan.start, end=plan.end, direction=plan.direction,
        masks=plan.masks if known_masks else None, prompts=_prompt_records(plan),
        classes=plan.classes, outputs={"png": plan.png, "overlay": plan.overlay, "rle": plan.rle},
        files=[path.name for path in _output_files(plan)], settings=settings,
        frame_names=plan.reader.frame_names[plan.start : plan.end], size=(plan.reader.height, plan.reader.width),
        fps=plan.reader.fps, objects=_object_classes(plan) if known_masks else None,
    )  # fmt: skip


def _prompt_records(plan: VideoPlan) -> list[dict]:
    """The prompts as run.json records them: a mask entry's file by the digest of its labels."""
    records = [prompt.to_json() for prompt in plan.prompts]
    for index, labels in plan.prompt_masks.items():
        records[index]["mask"] = run_record.labels_digest(labels)
    return records


def _object_classes(plan: VideoPlan) -> dict[int, str | None]:
    """Each object id of ``plan`` -> its class name (None: it has none)."""
    names = distinct_classes(plan.classes)
    return {i: None if row is None else names[row] for i, row in class_rows(plan.classes, plan.object_ids).items()}


def _output_range(masks: dict[int, np.ndarray], start: int | None, end: int | None, direction: str, num_frames: int) -> tuple[int, int]:
    """[first, last) frames a run writes."""
    stop = num_frames if end is None else end
    low = 0 if start is None else start
    check_stop(stop, low, num_frames)
    inside = [frame for frame in masks if low <= frame < stop]
    if masks and not inside:
        raise ParameterError("masks", f"no mask is given inside the frame range {low}..{stop - 1}")
    if direction == "forward":
        first = low if start is not None or not masks else min(inside)
        if masks:
            check_has_mask(first, masks)
        return first, stop
    if direction == "backward":
        return low, max(inside) + 1
    return low, stop


def _output_files(plan: VideoPlan) -> list[Path]:
    """Every file the run writes into its folder."""
    names = plan.reader.frame_names[plan.start : plan.end]
    files = [plan.out_dir / f"{name}.png" for name in names] if plan.png else []
    files += [plan.out_dir / name for name, wanted in (("overlay.mp4", plan.overlay), ("masks.json", plan.rle)) if wanted]
    return files + ([plan.out_dir / FIRST_FRAME_MASK] if plan.first_mask_made else [])


def track_to_folder(tracker: Tracker, plan: VideoPlan, on_frame: Callable[[], None] | None = None) -> TrackSummary:
    """Track ``plan`` with ``tracker`` and write its outputs; returns what was done.
    ``on_frame`` is called after each frame is written; with it, the caller shows the
    progress (a batch's one bar) and this video's own bar stays off."""
    began = time.perf_counter()
    state = tracker.init_state(plan.reader, plan.classes)
    for frame, labels in plan.masks.items():
        tracker.add_mask(state, frame, labels)
    give_prompts(tracker, state, plan.prompts, plan.prompt_masks)
    record = _record(plan, tracker.settings)
    ensure_writable_folder(plan.out_dir)
    with folder_lock(plan.out_dir):  # one run writes into a folder at a time
        run_record.check_reuse(plan.out_dir, record, plan.overwrite)
        remove_stale_temporaries(plan.out_dir)
        run_record.replace_previous(plan.out_dir, record)
        run_record.write_started(plan.out_dir, record)
        written, writer = _track_and_write(tracker, state, plan, on_frame)
        seconds = time.perf_counter() - began
        run_record.write_finished(plan.out_dir, record, written, seconds)
    stages = {**state.stage_seconds, "writing": writer.busy_seconds, "writing_wait": writer.wait_seconds}
    return TrackSummary(
        written, seconds, written / max(seconds, 1e-9), plan.out_dir, stages, list(plan.notes),
        state.cached_frames, state.computed_frames,
    )  # fmt: skip


def _track_and_write(
    tracker: Tracker, state: VideoState, plan: VideoPlan, on_frame: Callable[[], None] | None
) -> tuple[int, BackgroundCalls]:
    """Feed every frame of ``plan`` to the writers (in their own thread); (frames written,
    the writer thread's calls) once every output is complete."""
    written = 0
    with contextlib.ExitStack() as stack:
        stream = _ordered_results(tracker, state, plan)
        stack.callback(stream.close)  # an error stops the decode threads at once
        write = stack.enter_context(_writers(plan))
        bar = stack.enter_context(
            tqdm(
                total=plan.end - plan.start, desc=f"tracking {plan.video.name}", unit="frame", disable=None if on_frame is None else True
            )  # fmt: skip
        )
        # entered last, left first: every queued frame is written before the writers close
        writer = stack.enter_context(BackgroundCalls(write, WRITE_QUEUE, "pdmtrack-write"))
        for frame_idx, labels in stream:
            writer.submit(frame_idx, labels)
            written += 1
            bar.update(1)
            if on_frame is not None:
                on_frame()
    return written, writer


def _ordered_results(tracker: Tracker, state: VideoState, plan: VideoPlan) -> Iterator[tuple[int, np.ndarray]]:
    """(frame, labels) for every frame of the plan's range, ascending, per its direction."""
    if plan.direction != "backward":
        return tracker.propagate(state, start=plan.start, end=plan.end, direction=plan.direction)  # type: ignore[arg-type]
    last_mask = max(frame for frame in plan.given_frames if plan.start <= frame < plan.end)
    return in_frame_order(tracker.propagate(state, start=last_mask, end=plan.start - 1, direction="backward"))


@contextlib.contextmanager
def _writers(plan: VideoPlan) -> Iterator[Callable[[int, np.ndarray], None]]:
    """A ``write(frame index, labels)`` feeding every requested output (and the class-name
    mask), frames in order; the overlay decodes its own frames (decoding is cheap next to the
    features) and shows each at its source time, counted from the plan's first frame (a
    variable frame rate is kept). ``track_to_folder`` calls it from its writer thread."""
    reader = plan.reader
    with contextlib.ExitStack() as stack:
        pngs = MaskPngWriter(plan.out_dir) if plan.png else None
        size = (reader.width, reader.height)
        video = stack.enter_context(OverlayWriter(plan.out_dir / "overlay.mp4", reader.fps, *size)) if plan.overlay else None
        rles = stack.enter_context(RleJsonWriter(plan.out_dir / "masks.json", *size[::-1], plan.object_ids)) if plan.rle else None
        exports = []
        if plan.exports:
            info = export_info(plan.video, reader.frame_names[plan.start : plan.end], size[::-1], reader.fps, _object_classes(plan))
            exports = [stack.enter_context(open_export(f, default_target(plan.out_dir, f), info)) for f in plan.exports]
        with_frames = video is not None or any(export.needs_frames for export in exports)
        frames = (frame for _, batch in reader.batches(8, plan.start, plan.end) for frame in batch) if with_frames else None
        if frames is not None:
            stack.callback(frames.close)  # an error stops the decode thread at once

        def write(frame_idx: int, labels: np.ndarray) -> None:
            name = reader.frame_names[frame_idx]
            if plan.first_mask_made and frame_idx == plan.start:
                write_palette_png(plan.out_dir / FIRST_FRAME_MASK, labels)
            if pngs is not None:
                pngs.write(name, labels)
            frame = None if frames is None else next(frames)
            if video is not None and frame is not None:
                video.write(frame, labels, reader.frame_time(frame_idx) - reader.frame_time(plan.start))
            if rles is not None:
                rles.add(name, labels)
            for export in exports:
                export.write(frame_idx - plan.start, labels, frame)

        yield write


def give_prompts(tracker: Tracker, state: VideoState, prompts: Sequence[Prompt], masks: Mapping[int, np.ndarray]) -> None:
    """Give ``prompts`` to ``state`` in order, as ``add_points`` / ``add_box`` /
    ``add_object_mask`` / ``add_mask`` / ``remove_object`` calls; ``masks``: the mask entries'
    labels by index."""
    for index, prompt in enumerate(prompts):
        if prompt.end:
            tracker.remove_object(state, prompt.obj_id, from_frame=prompt.frame)  # type: ignore[arg-type]
        elif index in masks and prompt.obj_id is None:
            tracker.add_mask(state, prompt.frame, masks[index])
        elif index in masks:
            tracker.add_object_mask(state, prompt.frame, prompt.obj_id, masks[index] == prompt.obj_id)  # type: ignore[arg-type]
        elif prompt.box is not None:
            tracker.add_box(state, prompt.frame, prompt.obj_id, prompt.box, prompt.points or None, prompt.labels or None)
        else:
            tracker.add_points(state, prompt.frame, prompt.obj_id, prompt.points, prompt.labels)  # type: ignore[arg-type]


def check_ovdiff_plan(plan: VideoPlan) -> None:
    """ParameterError when ``plan`` cannot start from OVDiff objects (a mask is given); loads nothing."""
    if plan.given_frames:
        raise ParameterError(
            "init", "ovdiff makes the first-frame mask from the class names; give a mask (or clicks) or init ovdiff, not both"
        )


def plan_with_ovdiff_objects(
    tracker: Tracker, plan: VideoPlan, prototypes: PrototypeConfig, segment: SegmentConfig, prototypes_dir: str | Path | None = None
) -> VideoPlan:
    """``plan`` (class names, no mask) with its start frame's objects found by OVDiff as the
    given mask (written to first_frame_mask.png with the outputs), one class name per object."""
    check_ovdiff_plan(plan)
    objects, classes = ovdiff_objects(
        tracker, plan.reader.read(plan.start), plan.classes, prototypes=prototypes, segment=segment, prototypes_dir=prototypes_dir
    )
    counts = ", ".join(f"{classes.count(name)} {name}" for name in dict.fromkeys(classes))
    note = f"--init ovdiff: {len(classes)} object(s) in frame {plan.start} ({counts})"
    return replace(plan, masks={plan.start: objects}, classes=classes, notes=[*plan.notes, note], initialised=True)
