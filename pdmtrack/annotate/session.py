"""The annotation session behind the web app: one ``Tracker``, one video state, one project folder.

Every edit (a click, a box, a brush stroke, clearing an object's clicks) goes through the
Tracker's prompt API, is saved to the project at once, can be undone, and marks the tracked
frames it invalidates as stale. A tracked frame that is edited first becomes a given mask (the
tracked result is the starting point of the fix). One tracking job runs at a time, in a thread,
writing each frame to the project as it streams; it can be cancelled between two frames, and a
job found running when the project is opened again (the server was killed) is interrupted and
can be resumed. Listeners (the page's event stream) hear of every change.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pdmtrack.annotate.frames import FrameJpegs
from pdmtrack.annotate.project import FrameAnnotation, ObjectInfo, Project, default_colour
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.io.background import BackgroundCalls
from pdmtrack.io.exports import FORMATS, check_target, default_target, open_export
from pdmtrack.io.files import remove_stale_temporaries
from pdmtrack.io.video import FrameReader
from pdmtrack.io.writers import MaskPngWriter, OverlayWriter, RleJsonWriter, write_palette_png
from pdmtrack.runs.export_folder import export_info
from pdmtrack.sam.prompting import ObjectPrompt
from pdmtrack.tracking.prompts import MAX_OBJECT_ID, check_object_id, checked_prompt, merge_prompted
from pdmtrack.tracking.tracker import DIRECTIONS, Tracker, check_frame

OWN_FORMATS = ("davis", "coco-rle", "overlay")  # the app's own; then ``pdmtrack export``'s (io.exports)
EXPORT_FORMATS = (*OWN_FORMATS, *FORMATS)
CHECKPOINT_SECONDS = 1.0  # how often a running job's progress is saved to tracking.json
MAX_BRUSH_RADIUS = 200
WRITE_QUEUE = 16  # tracked frames a job may run ahead of its writer thread


class Busy(InputError):
    """An action that needs the tracker while a tracking job runs."""


@dataclass
class Job:
    """A tracking job: what it tracks, how far it got, and how it ended."""

    direction: str
    start: int | None
    end: int | None
    total: int
    state: str = "running"  # running | finished | cancelled | interrupted | failed
    done: int = 0
    last_frame: int | None = None
    fps: float = 0.0
    error: str = ""
    skip_through: int | None = None  # a resumed forward job: frames up to this one were written before


@dataclass
class Snapshot:
    """What an edit may change at one frame: its given masks and its objects' clicks."""

    whole: np.ndarray | None
    partial: np.ndarray | None
    clicks: dict[int, ObjectPrompt]
    logits: dict[int, object]


class AnnotationSession:
    """The app's state: edits, undo/redo, tracking jobs, exports, and change listeners."""

    def __init__(self, tracker: Tracker, project: Project, reader: FrameReader) -> None:
        self.tracker, self.project, self.reader = tracker, project, reader
        self.lock = threading.RLock()  # the session's bookkeeping: held briefly, readers never wait long
        self.tracker_lock = threading.RLock()  # the tracker and the state it reads: a job holds it a frame at a time
        self.objects = project.objects
        self.state = tracker.init_state(reader)  # class names: the objects' names, set when a job starts
        annotations, self.state.prompts.ends = project.read_annotations()
        for frame, (note, labels) in annotations.items():
            (self.state.masks if note.whole else self.state.prompts.masks)[frame] = labels
            for obj_id, click in note.clicks.items():
                points = tuple((float(x), float(y)) for x, y in click["points"])
                self.state.prompts.clicks[(frame, obj_id)] = ObjectPrompt(points, tuple(click["labels"]), _box(click["box"]))
        names = {name: index for index, name in enumerate(reader.frame_names)}
        folder = project.folder / "tracked"
        self.tracked = {names[p.stem] for p in folder.glob("*.png") if p.stem in names} if folder.is_dir() else set()
        status = project.read_status()
        self.stale: set[int] = set(status["stale"]) & self.tracked
        try:
            self.job = Job(**status["job"]) if status["job"] else None
        except TypeError:
            raise InputError(project.folder / "tracking.json", "damaged; delete it to start the tracking state afresh") from None
        if self.job is not None and self.job.state == "running":  # the server stopped while it ran
            self.job.state = "interrupted"
            self._save_status()
        self.undo_stack: list[tuple[int, Snapshot, Snapshot]] = []
        self.redo_stack: list[tuple[int, Snapshot, Snapshot]] = []
        self.version = 0
        self.frame_versions: dict[int, int] = {}
        self.listeners: list[Callable[[dict], None]] = []
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.export_lock = threading.Lock()
        self.jpegs = FrameJpegs(reader)
        self.stale_after: int | None = None  # an edit behind the running job: frames it tracks after this are stale

    # what the page reads --------------------------------------------------------------------------
    def summary(self) -> dict:
        """Everything the page shows, as JSON."""
        with self.lock:
            strip = "".join("s" if t in self.stale else "t" if t in self.tracked else "-" for t in range(self.state.num_frames))
            given = {
                str(f): {"whole": f in self.state.masks, "clicks": {str(i): c for i, c in self._clicks_at(f).items()}}
                for f in self.state.given_frames
            }
            return {
                "video": self.project.video.name, "frames": self.state.num_frames, "width": self.state.width,
                "height": self.state.height, "fps": self.state.fps, "frame_names": self.state.frame_names,
                "objects": {str(i): asdict(info) for i, info in sorted(self.objects.items())}, "given": given, "tracked": strip,
                "job": asdict(self.job) if self.job else None, "undo": len(self.undo_stack), "redo": len(self.redo_stack),
                "version": self.version, "frame_versions": {str(f): v for f, v in self.frame_versions.items()},
                "project": str(self.project.folder), "exports": self._exports(), "export_formats": list(EXPORT_FORMATS),
            }  # fmt: skip

    def labels(self, frame: int) -> np.ndarray:
        """Frame ``frame``'s label map as the page shows it: the given mask, else the tracked one
        with the objects clicked there on top."""
        check_frame("frame", frame, self.state.num_frames)
        with self.lock:
            whole = self.state.masks.get(frame)
            partial = self.state.prompts.masks.get(frame)
            clicked = self.state.prompts.objects_at(frame)
        if whole is not None:
            return whole.copy()
        tracked = self._read_tracked(frame)
        if partial is None:
            return tracked if tracked is not None else np.zeros((self.state.height, self.state.width), np.uint8)
        return partial.copy() if tracked is None else merge_prompted(tracked, partial, clicked)

    def frame_jpeg(self, frame: int) -> bytes:
        """Frame ``frame`` as the page shows it (JPEG; see ``annotate.frames``)."""
        check_frame("frame", frame, self.state.num_frames)
        return self.jpegs.get(frame)

    # objects --------------------------------------------------------------------------------------
    def add_object(self, name: str = "", colour: str = "") -> int:
        """A new object id (the smallest free one), with its name and colour."""
        with self.lock:
            used = set(self.objects) | set(self.state.object_ids)
            obj_id = next((i for i in range(1, MAX_OBJECT_ID + 1) if i not in used), None)
            if obj_id is None:
                raise ParameterError("obj_id", f"all {MAX_OBJECT_ID} object ids are in use")
            self.objects[obj_id] = ObjectInfo(name.strip(), colour or default_colour(obj_id))
            self._changed_objects()
            return obj_id

    def update_object(self, obj_id: int, name: str | None = None, colour: str | None = None) -> None:
        with self.lock:
            info = self.objects.get(self._known(obj_id))
            assert info is not None
            if name is not None:
                info.name = name.strip()
            if colour is not None:
                info.colour = colour
            self._changed_objects()

    def remove_object(self, obj_id: int, from_frame: int | None = None) -> None:
        """End ``obj_id`` everywhere or from a frame on: its given pixels, clicks and tracked
        pixels there go. Not undoable (the undo history is cleared)."""
        self._not_tracking()  # before waiting for the tracker, which a running job holds
        with self.tracker_lock, self.lock:
            self._not_tracking()
            obj_id = self._known(obj_id)
            if from_frame is not None:
                check_frame("from_frame", from_frame, self.state.num_frames)
            given_before = {f: self.state.given_labels(f) for f in self.state.given_frames}
            if obj_id in self.state.object_ids:
                self.tracker.remove_object(self.state, obj_id, from_frame)
            # the tracker removes it everywhere from (or before) its first given frame: so do the tracked frames
            first = from_frame if from_frame is not None and obj_id in self.state.prompts.ends else 0
            for frame in sorted(t for t in self.tracked if t >= first):
                labels = self._read_tracked(frame)
                if labels is not None and (labels == obj_id).any():
                    write_palette_png(self._tracked_file(frame), np.where(labels == obj_id, 0, labels).astype(np.uint8))
                    self._touch(frame)
            for frame, labels in given_before.items():
                if self.state.given_labels(frame) is not labels:
                    self._persist(frame)
            if first == 0:
                self.objects.pop(obj_id, None)
            self.undo_stack.clear()
            self.redo_stack.clear()
            self._changed_objects()

    # edits ----------------------------------------------------------------------------------------
    def click(self, frame: int, obj_id: int, x: float, y: float, positive: bool = True) -> np.ndarray:
        """A click on ``obj_id`` at ``frame`` (positive or negative); the frame's labels after it."""
        with self._edit(frame, obj_id):
            self.tracker.add_points(self.state, frame, obj_id, [(x, y)], [int(positive)])
        return self.labels(frame)

    def box(self, frame: int, obj_id: int, box: tuple[float, float, float, float]) -> np.ndarray:
        with self._edit(frame, obj_id):
            self.tracker.add_box(self.state, frame, obj_id, box)
        return self.labels(frame)

    def brush(self, frame: int, obj_id: int, points: list[tuple[float, float]], radius: float, erase: bool = False) -> np.ndarray:
        """Paint (or erase) ``obj_id`` along ``points`` with a round brush of ``radius`` pixels."""
        checked_prompt(points, None, None, self.state.width, self.state.height)
        if not 1 <= radius <= MAX_BRUSH_RADIUS:
            raise ParameterError("radius", f"{radius} is not a brush radius in pixels (1..{MAX_BRUSH_RADIUS})")
        with self._edit(frame, obj_id):
            stroke = np.zeros((self.state.height, self.state.width), np.uint8)
            line = np.round(np.asarray(points, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(stroke, [line], False, 1, thickness=max(1, int(round(2 * radius))))
            for x, y in line[:, 0]:
                cv2.circle(stroke, (int(x), int(y)), int(round(radius)), 1, thickness=-1)
            current = self.labels(frame) == obj_id
            self.tracker.add_object_mask(self.state, frame, obj_id, current & (stroke == 0) if erase else current | (stroke > 0))
        return self.labels(frame)

    def clear(self, frame: int, obj_id: int) -> np.ndarray:
        """Forget ``obj_id``'s clicks at ``frame`` and take it out of that frame's given mask."""
        with self._edit(frame, obj_id, promote=False):
            self.tracker.clear_prompts(self.state, frame, obj_id)
        return self.labels(frame)

    def undo(self) -> int | None:
        """Undo the last edit; the frame it changed (None: nothing to undo)."""
        return self._step(self.undo_stack, self.redo_stack, before=True)

    def redo(self) -> int | None:
        return self._step(self.redo_stack, self.undo_stack, before=False)

    def _step(self, source: list, target: list, before: bool) -> int | None:
        with self.tracker_lock, self.lock:
            if not source:
                return None
            frame, old, new = source.pop()
            self._restore(frame, old if before else new)
            target.append((frame, old, new))
            self._after_edit(frame)
            return frame

    @contextlib.contextmanager
    def _edit(self, frame: int, obj_id: int, promote: bool = True) -> Iterator[None]:
        """Run an edit of ``frame`` under the lock: the tracked result becomes the frame's
        given mask first (``promote``); undo entry, save, stale marks and events after it."""
        check_frame("frame", frame, self.state.num_frames)
        check_object_id(obj_id)
        with self.tracker_lock, self.lock:
            before = self._snapshot(frame)
            if promote and frame not in self.state.given_frames and frame in self.tracked:
                tracked = self._read_tracked(frame)
                if tracked is not None and tracked.any():
                    self.tracker.add_mask(self.state, frame, tracked)
            try:
                yield
            except BaseException:
                self._restore(frame, before)
                raise
            if obj_id not in self.objects:
                self.objects[obj_id] = ObjectInfo("", default_colour(obj_id))
                self._changed_objects()
            self.undo_stack.append((frame, before, self._snapshot(frame)))
            self.redo_stack.clear()
            self._after_edit(frame)

    def _after_edit(self, frame: int) -> None:
        self._persist(frame)
        high = min((g for g in self.state.given_frames if g > frame), default=self.state.num_frames)
        self.stale |= {t for t in self.tracked if frame < t < high}  # tracked from a mask that changed
        job = self.job
        if self.tracking and job is not None and job.last_frame is not None and frame < job.last_frame:
            self.stale_after = frame if self.stale_after is None else min(self.stale_after, frame)  # the job's memory predates it
        self._save_status()
        self._touch(frame)
        self._publish({"type": "state"})

    def _snapshot(self, frame: int) -> Snapshot:
        prompts = self.state.prompts
        whole, partial = self.state.masks.get(frame), prompts.masks.get(frame)
        return Snapshot(
            None if whole is None else whole.copy(), None if partial is None else partial.copy(),
            {o: p for (f, o), p in prompts.clicks.items() if f == frame}, {o: v for (f, o), v in prompts.logits.items() if f == frame},
        )  # fmt: skip

    def _restore(self, frame: int, snapshot: Snapshot) -> None:
        for store, labels in ((self.state.masks, snapshot.whole), (self.state.prompts.masks, snapshot.partial)):
            store.pop(frame, None)
            if labels is not None:
                store[frame] = labels.copy()
        self.state.prompts.forget(frame)
        self.state.prompts.clicks.update({(frame, o): p for o, p in snapshot.clicks.items()})
        self.state.prompts.logits.update({(frame, o): v for o, v in snapshot.logits.items()})  # type: ignore[misc]

    def _persist(self, frame: int | None) -> None:
        """Save ``frame``'s given mask (or its removal; None: none changed), the annotation
        index with the objects' ends, and prompts.json."""
        frames = {
            f: (FrameAnnotation(f in self.state.masks, self._clicks_at(f)), self.state.given_labels(f)) for f in self.state.given_frames
        }
        self.project.save_annotations(frames, frame, dict(self.state.prompts.ends))  # type: ignore[arg-type]

    def _clicks_at(self, frame: int) -> dict[int, dict]:
        return {
            obj_id: {
                "points": [list(p) for p in prompt.points],
                "labels": list(prompt.labels),
                "box": list(prompt.box) if prompt.box else None,
            }
            for (f, obj_id), prompt in sorted(self.state.prompts.clicks.items())
            if f == frame
        }

    # tracking -------------------------------------------------------------------------------------
    def track(
        self,
        direction: str = "forward",
        start: int | None = None,
        end: int | None = None,
        from_frame: int | None = None,
        resume: bool = False,
    ) -> Job:
        """Start a tracking job: over [start, end) in ``direction``; from a given frame up to the
        next given frame (``from_frame``: "track from here"); or the interrupted/cancelled job
        again (``resume``: forward jobs skip rewriting the frames they had written)."""
        self._not_tracking()  # before waiting for the tracker, which a running job holds
        with self.tracker_lock, self.lock:
            self._not_tracking()
            skip = None
            if resume:
                if self.job is None or self.job.state not in ("interrupted", "cancelled"):
                    raise ParameterError("resume", "no interrupted or cancelled tracking job to resume")
                direction, start, end = self.job.direction, self.job.start, self.job.end
                last = self.job.last_frame if direction == "forward" else None
                # frames edited behind the job since are rewritten: skip only up to the first stale one
                skip = None if last is None else min([last, *(f - 1 for f in self.stale if f <= last)])
            elif from_frame is not None:
                check_frame("from_frame", from_frame, self.state.num_frames)
                if from_frame not in self.state.given_frames:
                    raise ParameterError("from_frame", f"frame {from_frame} has no given mask: edit it first, then track from it")
                shown = self.labels(from_frame)
                if from_frame not in self.state.masks and shown.any():  # clicks only: the others' tracked pixels join it
                    self.tracker.add_mask(self.state, from_frame, shown)
                    self._persist(from_frame)
                direction, start = "forward", from_frame
                end = min((g for g in self.state.given_frames if g > from_frame), default=self.state.num_frames)
            if direction not in DIRECTIONS:
                raise ParameterError("direction", f"unknown value '{direction}' (choose from {', '.join(DIRECTIONS)})")
            self._sync_classes()
            results = self.tracker.propagate(self.state, start, end, direction)  # type: ignore[arg-type]
            self.job = Job(direction, start, end, self._job_size(direction, start, end), skip_through=skip)
            self._cancel.clear()
            self.stale_after = None
            self._save_status()
            self._thread = threading.Thread(target=self._run, args=(results, self.job), name="pdmtrack-annotate-job", daemon=True)
            self._thread.start()
            self._publish({"type": "state"})
            return self.job

    def cancel(self) -> None:
        """Stop the running job after the frame it is on (what it finished stays)."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running job to end (tests, the benchmark)."""
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def tracking(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, results: Iterator[tuple[int, np.ndarray]], job: Job) -> None:
        """The job's thread: frames from the tracker, written and announced by a writer thread
        (so tracking never waits for a PNG)."""
        began = checkpoint = time.perf_counter()

        def written(frame: int, labels: np.ndarray) -> None:  # the writer thread: the PNG, then the bookkeeping
            nonlocal checkpoint
            if job.skip_through is None or frame > job.skip_through:
                self._tracked_file(frame).parent.mkdir(exist_ok=True)
                write_palette_png(self._tracked_file(frame), labels)
            with self.lock:
                self.tracked.add(frame)
                if self.stale_after is not None and frame > self.stale_after and job.direction == "forward":
                    self.stale.add(frame)
                else:
                    self.stale.discard(frame)
                job.done, job.last_frame = job.done + 1, frame
                job.fps = job.done / max(time.perf_counter() - began, 1e-9)
                if time.perf_counter() - checkpoint > CHECKPOINT_SECONDS:
                    self._save_status()
                    checkpoint = time.perf_counter()
                self._touch(frame)
            self._publish({"type": "frame", "frame": frame, "done": job.done, "total": job.total, "fps": job.fps})

        try:
            with BackgroundCalls(written, WRITE_QUEUE, "pdmtrack-annotate-write") as writer:
                while not self._cancel.is_set():
                    with self.tracker_lock:
                        item = next(results, None)
                    if item is None:
                        break
                    writer.submit(*item)
            job.state = "cancelled" if self._cancel.is_set() else "finished"
        except Exception as err:  # shown on the page; the server goes on
            job.state, job.error = "failed", str(err).splitlines()[0] if str(err) else type(err).__name__
        finally:
            with self.tracker_lock:
                results.close()  # type: ignore[attr-defined]
            with self.lock:
                self._save_status()
            self._publish({"type": "state"})

    def _job_size(self, direction: str, start: int | None, end: int | None) -> int:
        """Frames a job will yield (for its progress bar)."""
        given, frames = self.state.given_frames, self.state.num_frames
        if direction == "forward":
            first = start if start is not None else (given[0] if given else 0)
            return (end if end is not None else frames) - first
        if direction == "backward":
            first = start if start is not None else given[-1]
            return first - (end if end is not None else -1)
        return (end if end is not None else frames) - (start or 0)

    def _sync_classes(self) -> None:
        """The objects' names as the state's class names (the features' prompt)."""
        present = set(self.state.object_ids)
        classes = {i: info.name for i, info in self.objects.items() if info.name and i in present}
        if classes != self.state.classes:
            self.state.classes = classes
            self.state.source = self.tracker.feature_source(classes)

    def _not_tracking(self) -> None:
        if self.tracking:
            raise Busy("tracking", "a tracking job is running: wait for it or cancel it first")

    # exports --------------------------------------------------------------------------------------
    def export(self, format: str) -> Path:
        """Write every frame's labels as the page shows them into the project's ``exports/``
        (replacing the previous export of that format once the new one is complete)."""
        if format not in EXPORT_FORMATS:
            raise ParameterError("format", f"unknown export format '{format}' (choose from {', '.join(EXPORT_FORMATS)})")
        exports = self.project.folder / "exports"
        exports.mkdir(exist_ok=True)
        if format in FORMATS:
            with self.export_lock:
                return self._export_format(format)
        remove_stale_temporaries(exports)
        target = exports / format
        with self.export_lock:  # one export at a time: they replace each other's folders
            scratch = Path(
                tempfile.mkdtemp(prefix=f".{format}.{os.getpid()}-", suffix=".tmp", dir=exports)
            )  # remove_stale_temporaries' pattern
            try:
                self._write_export(format, scratch)
                if target.exists():
                    shutil.rmtree(target)
                scratch.rename(target)
            finally:
                if scratch.exists():
                    shutil.rmtree(scratch)
        self._publish({"type": "state"})
        return target

    def _export_format(self, format: str) -> Path:
        """One of ``pdmtrack export``'s formats (YouTube-VIS, COCO, MOTS, CVAT, ...), streamed."""
        target = check_target(default_target(self.project.folder, format), format, overwrite=True)
        names = {i: info.name or None for i, info in self.objects.items()}
        info = export_info(self.project.video, self.state.frame_names, (self.state.height, self.state.width), self.state.fps, names)
        with open_export(format, target, info) as writer:
            for frame in range(self.state.num_frames):
                writer.write(frame, self.labels(frame), self.reader.read(frame) if writer.needs_frames else None)
        self._publish({"type": "state"})
        return target

    def _write_export(self, format: str, folder: Path) -> None:
        names, size = self.state.frame_names, (self.state.height, self.state.width)
        if format == "davis":
            writer = MaskPngWriter(folder)
            for frame, name in enumerate(names):
                writer.write(name, self.labels(frame))
        elif format == "coco-rle":
            with RleJsonWriter(folder / "masks.json", *size, sorted(self.objects)) as rles:
                for frame, name in enumerate(names):
                    rles.add(name, self.labels(frame))
        else:
            with OverlayWriter(folder / "overlay.mp4", self.state.fps, self.state.width, self.state.height) as video:
                for frame in range(len(names)):
                    video.write(self.reader.read(frame), self.labels(frame))

    def _exports(self) -> list[str]:
        folder = self.project.folder / "exports"
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []

    # helpers --------------------------------------------------------------------------------------
    def _known(self, obj_id: int) -> int:
        obj_id = check_object_id(obj_id)
        if obj_id not in self.objects and obj_id not in self.state.object_ids:
            raise ParameterError("obj_id", f"no object {obj_id} (objects: {', '.join(map(str, sorted(self.objects))) or 'none'})")
        return obj_id

    def _changed_objects(self) -> None:
        self.project.set_objects(self.objects)
        self._persist(None)  # prompts.json names the objects' classes
        self.version += 1
        self._publish({"type": "state"})

    def _touch(self, frame: int) -> None:
        self.version += 1
        self.frame_versions[frame] = self.version

    def _tracked_file(self, frame: int) -> Path:
        return self.project.tracked_file(self.state.frame_names[frame])

    def _read_tracked(self, frame: int) -> np.ndarray | None:
        if frame not in self.tracked:
            return None
        with Image.open(self._tracked_file(frame)) as image:
            return np.asarray(image).copy()

    def _save_status(self) -> None:
        self.project.save_status({"stale": sorted(self.stale), "job": asdict(self.job) if self.job else None})

    def _publish(self, event: dict) -> None:
        for listener in list(self.listeners):
            listener(event)


def _box(values: list | None) -> tuple[float, float, float, float] | None:
    return None if values is None else (float(values[0]), float(values[1]), float(values[2]), float(values[3]))
