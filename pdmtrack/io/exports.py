"""Exports other tools read: YouTube-VIS, COCO, MOTS (txt and png), CVAT for video 1.1 XML,
per-object binary masks and RGBA cut-outs.

Every writer takes the frames' label maps in frame order (``write(position, labels, frame)``)
and keeps its memory flat in the video's length: the JSON and txt formats stream to a
temporary file renamed on a clean close (as :class:`pdmtrack.io.writers.RleJsonWriter`);
YouTube-VIS and CVAT, which group by object, spool each object's frames to an unnamed
temporary file beside the target and assemble the file at the end; the folder formats write
into a temporary folder renamed onto the target at the end (holding ``EXPORT_MARK``, so an
``overwrite`` never replaces a folder that is not an export).

Class ids: the names of MOTS's classes keep MOTS's ids (``car`` 1, ``pedestrian`` or
``person`` 2, any case); every other class name, in the order of the objects that carry them
(object ids ascending), takes the smallest id not taken, never 10 (MOTS's ignore regions).
An object without a class name is of class ``object``. MOTS ids are ``class_id * 1000 +
object id``.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import itertools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image

from pdmtrack.errors import InputError, ParameterError
from pdmtrack.io.files import atomic_path, staged_folder
from pdmtrack.io.masks import encode_rle
from pdmtrack.io.writers import VideoWriter

NO_CLASS = "object"  # the category of an object without a class name
MOTS_IGNORE_CLASS = 10  # MOTS's class id of ignore regions: never given to a class
MOTS_CLASSES = {"car": 1, "pedestrian": 2, "person": 2}  # class names that keep MOTS's ids
EXPORT_MARK = ".pdmtrack-export"  # inside every folder export


@dataclass(frozen=True)
class ExportInfo:
    """What every export needs besides the masks: the video's name, the frames' names, their
    size and rate, and each object's class name (``classes``: object id -> name)."""

    video: str
    frame_names: list[str]
    height: int
    width: int
    fps: float
    classes: dict[int, str]

    @functools.cached_property
    def object_ids(self) -> list[int]:
        return sorted(self.classes)

    @functools.cached_property
    def class_ids(self) -> dict[str, int]:
        """Class name -> class id (see the module's docstring)."""
        names = list(dict.fromkeys(self.classes[i] for i in self.object_ids))
        ids: dict[str, int] = {}
        for name in names:
            known = MOTS_CLASSES.get(name.lower())
            if known is not None and known not in ids.values():
                ids[name] = known
        taken = {MOTS_IGNORE_CLASS, *ids.values()}
        free = (i for i in itertools.count(1) if i not in taken)
        return {name: ids[name] if name in ids else next(free) for name in names}

    def class_id(self, object_id: int) -> int:
        return self.class_ids[self.classes[object_id]]

    def categories(self) -> list[dict]:
        """COCO / YouTube-VIS categories."""
        return [{"id": class_id, "name": name, "supercategory": name} for name, class_id in self.class_ids.items()]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the pixels of a non-empty boolean mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def _instance(mask: np.ndarray) -> dict | None:
    """COCO's segmentation (RLE), area and bbox of a mask; None when it is empty."""
    if not mask.any():
        return None
    return {"segmentation": encode_rle(mask), "area": int(mask.sum()), "bbox": list(mask_box(mask))}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class _Export:
    """A writer's life cycle: ``__enter__`` prepares, ``write`` takes each frame in order,
    a clean ``__exit__`` completes the target; after an error nothing appears under it."""

    needs_frames = False  # whether write() needs the RGB frame

    def __init__(self, target: str | Path, info: ExportInfo) -> None:
        self.target = Path(target)
        self.info = info
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Export:
        try:
            self._open()
        except BaseException as err:
            self.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def write(self, position: int, labels: np.ndarray, frame_rgb: np.ndarray | None = None) -> None:
        """Add the frame at ``position`` (0 = the first frame exported)."""
        raise NotImplementedError

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self._finish()
        except BaseException as err:
            self._stack.__exit__(type(err), err, err.__traceback__)
            raise
        self._stack.__exit__(exc_type, exc, tb)

    def _open(self) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Complete the export (before the temporary file or folder is renamed)."""

    def _check_size(self, labels: np.ndarray) -> None:
        if labels.shape != (self.info.height, self.info.width):
            raise ValueError(f"labels {labels.shape} do not match {(self.info.height, self.info.width)}")

    def _object_masks(self, labels: np.ndarray) -> dict[int, np.ndarray]:
        self._check_size(labels)
        return {object_id: labels == object_id for object_id in self.info.object_ids}


class _FileExport(_Export):
    """One text file, written under a temporary name and renamed when complete."""

    def _open(self) -> None:
        tmp = self._stack.enter_context(atomic_path(self.target))
        self._file = self._stack.enter_context(tmp.open("w", encoding="utf-8"))
        self._begin()

    def _begin(self) -> None:
        """Write the file's head."""

    def _spool(self) -> IO[str]:
        """An unnamed temporary text file beside the target (gone when closed)."""
        return self._stack.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.target.parent))


class _FolderExport(_Export):
    """A folder of files, written into a temporary folder renamed onto the target when complete."""

    def _open(self) -> None:
        self.folder = self._stack.enter_context(staged_folder(self.target))

    def _finish(self) -> None:
        (self.folder / EXPORT_MARK).write_text(f"{self.info.video}\n", encoding="utf-8")

    def _save(self, image: Image.Image, *parts: str) -> None:
        path = self.folder.joinpath(*parts)
        path.parent.mkdir(exist_ok=True)
        image.save(path, format="PNG")


class YouTubeVisWriter(_FileExport):
    """YouTube-VIS JSON: one video, one annotation per object with per-frame
    ``segmentations`` (COCO RLE), ``areas`` and ``bboxes``, ``null`` where the object is absent.
    Each object's frames are spooled to a temporary file until the end."""

    def _begin(self) -> None:
        self._spools = {object_id: self._spool() for object_id in self.info.object_ids}

    def write(self, position: int, labels: np.ndarray, frame_rgb: np.ndarray | None = None) -> None:
        for object_id, mask in self._object_masks(labels).items():
            self._spools[object_id].write(json.dumps(_instance(mask)) + "\n")

    def _finish(self) -> None:
        info = self.info
        video = {
            "id": 1, "name": info.video, "width": info.width, "height": info.height, "length": len(info.frame_names),
            "file_names": [f"{info.video}/{name}.jpg" for name in info.frame_names],
        }  # fmt: skip
        head = {"info": {"description": f"pdmtrack export of {info.video}", "date_created": _now()}, "videos": [video]}
        self._file.write(json.dumps({**head, "categories": info.categories()})[:-1] + ', "annotations": [')
        for index, (object_id, spool) in enumerate(self._spools.items()):
            annotation = {
                "id": object_id, "video_id": 1, "category_id": info.class_id(object_id), "iscrowd": 0,
                "width": info.width, "height": info.height, "length": 1,
            }  # fmt: skip
            self._file.write(("," if index else "") + "\n" + json.dumps(annotation)[:-1])
            for key, field in (("segmentations", "segmentation"), ("areas", "area"), ("bboxes", "bbox")):
                spool.seek(0)
                self._file.write(f', "{key}": [')
                for frame, line in enumerate(spool):
                    instance = json.loads(line)
                    self._file.write((", " if frame else "") + json.dumps(instance and instance[field]))
                self._file.write("]")
            self._file.write("}")
        self._file.write("\n]}\n")


class CocoWriter(_FileExport):
    """COCO instances JSON: one image per frame (``frame_index``, ``video``) and one annotation
    per object and frame where it is present (RLE, area, bbox, category, ``track_id`` = the
    object id). Streamed."""

    def _begin(self) -> None:
        info = self.info
        head = {"info": {"description": f"pdmtrack export of {info.video}", "date_created": _now()}, "categories": info.categories()}
        self._file.write(json.dumps(head)[:-1] + ', "images": [')
        for position, name in enumerate(info.frame_names):
            image = {
                "id": position + 1, "file_name": f"{info.video}/{name}.jpg", "width": info.width, "height": info.height,
                "frame_index": position, "video": info.video,
            }  # fmt: skip
            self._file.write(("," if position else "") + "\n" + json.dumps(image))
        self._file.write('\n], "annotations": [')
        self._annotations = 0

    def write(self, position: int, labels: np.ndarray, frame_rgb: np.ndarray | None = None) -> None:
        for object_id, mask in self._object_masks(labels).items():
            instance = _instance(mask)
            if instance is None:
                continue
            self._annotations += 1
            annotation = {
                "id": self._annotations, "image_id": position + 1, "category_id": self.info.class_id(object_id),
                **instance, "iscrowd": 0, "track_id": object_id,
            }  # fmt: skip
            self._file.write(("," if self._annotations > 1 else "") + "\n" + json.dumps(annotation))

    def _finish(self) -> None:
        self._file.write("\n]}\n")


class MotsTxtWriter(_FileExport):
    """MOTS txt: a line ``frame id class_id height width rle`` per object and frame where it is
    present (``frame`` = position from 0, ``rle`` = COCO's compressed counts). Streamed."""

    def write(self, position: int, labels: np.ndarray, frame_rgb: np.ndarray | None = None) -> None:
        info = self.info
        for object_id, mask in self._object_masks(labels).items():
            if mask.any():
                class_id = info.class_id(object_id)
                counts = encode_rle(mask)["counts"]
                self._file.write(f"{position} {class_id * 1000 + object_id} {class_id} {info.height} {info.width} {counts}\n")


class MotsPngWriter(_FolderExport):
    """MOTS png: one 16-bit PNG per frame, ``000000.png``, ``000001.png``, ... (the frame's
    position, as MOTS names them and its txt numbers them), pixel = ``class_id * 1000 +
    object id``, 0 = background."""

    def __init__(self, target: str | Path, info: ExportInfo) -> None:
        super().__init__(target, info)
        self._ids = np.zeros(256, dtype=np.uint16)  # label -> MOTS id (0 for labels of no object)
        for object_id in info.object_ids:
            self._ids[object_id] = info.class_id(object_id) * 1000 + object_id

    def write(self, position: int, labels: np.ndarray, frame_rgb: np.ndarray | None = None) -> None:
        self._check_size(labels)
        self._save(Image.fromarray(self._ids[labels]), f"{position:06d}.png")


def cvat_rle(mask: np.ndarray) -> tuple[str, tuple[int, int, int, int]]:
    """CVAT's mask RLE of a non-empty mask: run lengths over its box (row by row, starting
    with a run of background, 0 when the box starts with the object), and the box
    (left, top, width, height)."""
    left, top, width, height = box = mask_box(mask)
    flat = mask[top : top + height, left : left + width].ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size])))
    if flat[0]:
        runs = np.concatenate(([0], runs))
    return ",".join(map(str, runs.tolist())), box


class CvatVideoWriter(_FileExport):
    """CVAT for video 1.1 XML: one track per object, a ``mask`` shape (CVAT's RLE with
    left/top/width/height) on every frame where the object is present and an ``outside``
    shape where it leaves. Each object's shapes are spooled to a temporary file until the end."""

    def _begin(self) -> None:
        self._spools = {object_id: self._spool() for object_id in self.info.object_ids}
        self._last: dict[int, str] = {}  # object id -> its last shape's rle and box attributes, while present

    def write(self, position: int, labels: np.ndarray, frame_rgb: np.ndarray | None = None) -> None:
        for object_id, mask in self._object_masks(labels).items():
            if mask.any():
                rle, (left, top, width, height) = cvat_rle(mask)
                self._last[object_id] = f'rle="{rle}" left="{left}" top="{top}" width="{width}" height="{height}"'
                outside = "0"
            elif object_id in self._last:  # it left: CVAT repeats the last shape, outside
                outside = "1"
            else:
                continue
            shape = self._last[object_id]
            if outside == "1":
                del self._last[object_id]
            self._spools[object_id].write(
                f'    <mask frame="{position}" keyframe="1" outside="{outside}" occluded="0" {shape} z_order="0"></mask>\n'
            )

    def _finish(self) -> None:
        info = self.info
        last = len(info.frame_names) - 1
        labels = "".join(
            f"        <label>\n          <name>{_text(name)}</name>\n          <type>mask</type>\n          <attributes></attributes>\n        </label>\n"
            for name in info.class_ids
        )
        self._file.write(
            '<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n  <meta>\n    <task>\n'
            f"      <id>1</id>\n      <name>{_text(info.video)}</name>\n      <size>{len(info.frame_names)}</size>\n"
            "      <mode>interpolation</mode>\n      <overlap>0</overlap>\n      <bugtracker></bugtracker>\n"
            f"      <flipped>False</flipped>\n      <created>{_now()}</created>\n      <updated>{_now()}</updated>\n"
            f"      <labels>\n{labels}      </labels>\n"
            f"      <segments>\n        <segment>\n          <id>1</id>\n          <start>0</start>\n          <stop>{last}</stop>\n"
            "          <url></url>\n        </segment>\n      </segments>\n"
            f"      <original_size>\n        <width>{info.width}</width>\n        <height>{info.height}</height>\n      </original_size>\n"
            f"    </task>\n    <dumped>{_now()}</dumped>\n  </meta>\n"
        )
        for track, (object_id, spool) in enumerate(self._spools.items()):
            label = quoteattr(info.classes[object_id])
            self._file.write(f'  <track id="{track}" label={label} source="auto">\n')
            spool.seek(0)
            shutil.copyfileobj(spool, self._file)
            self._file.write("  </track>\n")
        self._file.write("</annotations>\n")


def _text(value: str) -> str:
    """``value`` escaped as XML character data."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class BinaryMaskWriter(_FolderExport):
    """One 0/255 PNG per object and frame: ``<object id>/<frame>.png`` (all 0 where absent)."""

    def write(self, position: int, labels: np.ndarray, frame_rgb: np.ndarray | None = None) -> None:
        name = f"{self.info.frame_names[position]}.png"
        for object_id, mask in self._object_masks(labels).items():
            self._save(Image.fromarray(mask.astype(np.uint8) * 255), str(object_id), name)


class CutoutWriter(_FolderExport):
    """One RGBA PNG per object and frame, ``<object id>/<frame>.png``: the frame's pixels where
    the object is, transparent (and black) elsewhere; with ``matte``, also ``<object id>.mp4``,
    the object's mask as a grey video (white = object) at the frames' rate."""

    needs_frames = True

    def __init__(self, target: str | Path, info: ExportInfo, matte: bool = False) -> None:
        super().__init__(target, info)
        self.matte = matte

    def _open(self) -> None:
        super()._open()
        size = (self.info.width, self.info.height)
        self._mattes = {
            object_id: self._stack.enter_context(VideoWriter(self.folder / f"{object_id}.mp4", self.info.fps, *size))
            for object_id in (self.info.object_ids if self.matte else [])
        }

    def write(self, position: int, labels: np.ndarray, frame_rgb: np.ndarray | None = None) -> None:
        if frame_rgb is None or frame_rgb.shape != (self.info.height, self.info.width, 3):
            raise ValueError("cutout needs each (H, W, 3) RGB frame")
        name = f"{self.info.frame_names[position]}.png"
        for object_id, mask in self._object_masks(labels).items():
            alpha = mask.astype(np.uint8) * 255
            rgba = np.dstack([np.where(mask[..., None], frame_rgb, 0), alpha]).astype(np.uint8)
            self._save(Image.fromarray(rgba, mode="RGBA"), str(object_id), name)
            if object_id in self._mattes:
                self._mattes[object_id].write(np.repeat(alpha[..., None], 3, axis=2))


# format name -> (writer, default target name)
FORMATS: dict[str, tuple[type[_Export], str]] = {
    "youtube-vis": (YouTubeVisWriter, "youtube-vis.json"),
    "coco": (CocoWriter, "coco.json"),
    "mots-txt": (MotsTxtWriter, "mots.txt"),
    "mots-png": (MotsPngWriter, "mots-png"),
    "cvat-video": (CvatVideoWriter, "cvat-video.xml"),
    "binary": (BinaryMaskWriter, "binary"),
    "cutout": (CutoutWriter, "cutout"),
}
EXPORTS_FOLDER = "exports"  # inside an output folder: where exports go by default


def check_format(name: str, format: str, matte: bool = False) -> None:
    """ParameterError naming ``name`` for an unknown format (or ``matte`` with another than cutout)."""
    if format not in FORMATS:
        raise ParameterError(name, f"unknown format '{format}' (choose from {', '.join(FORMATS)})")
    if matte and format != "cutout":
        raise ParameterError("matte", f"only the cutout format writes a matte video, not {format}")


def default_target(out_dir: str | Path, format: str) -> Path:
    """Where an export of the run in ``out_dir`` goes when no target is given."""
    return Path(out_dir) / EXPORTS_FOLDER / FORMATS[format][1]


def check_target(target: str | Path, format: str, overwrite: bool) -> Path:
    """``target`` as a Path, refused (InputError) when it exists unless ``overwrite``, when it is
    a file where the format writes a folder (or the other way round), and when it is a folder
    that holds no export (an overwrite replaces only pdmtrack's own exports). Creates nothing."""
    target = Path(target)
    folder = issubclass(FORMATS[format][0], _FolderExport)
    blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InputError(target, f"cannot be created: {blocker} is a file; choose another -o")
    if not target.exists():
        return target
    if target.is_dir() != folder:
        kind = "a folder" if folder else "a file"
        raise InputError(target, f"is {'a file' if folder else 'a folder'}, but {format} writes {kind}; choose another -o")
    if not overwrite:
        raise InputError(target, "exists; pass --overwrite to replace it, or choose another -o")
    if folder and not (target / EXPORT_MARK).is_file():
        raise InputError(target, f"is a folder pdmtrack did not export (no {EXPORT_MARK} in it); choose another -o")
    return target


def open_export(format: str, target: str | Path, info: ExportInfo, matte: bool = False) -> _Export:
    """The writer of ``format`` into ``target`` (enter it, ``write`` every frame in order)."""
    check_format("format", format, matte)
    writer, _ = FORMATS[format]
    return CutoutWriter(target, info, matte) if writer is CutoutWriter else writer(target, info)
