"""An annotation project folder: everything of a ``pdmtrack annotate`` session, saved as it happens.

    DIR/project.json      the video (path, frames, size) and the objects (id -> name, colour)
    DIR/annotations.json  per given frame: whole mask or clicked objects only, each object's clicks
    DIR/given/00012.png   the given label map of frame 12 (DAVIS palette PNG)
    DIR/tracked/*.png     the tracked masks (DAVIS layout, named like the frames)
    DIR/tracking.json     stale frames and the last tracking job (running / finished / cancelled / interrupted)
    DIR/prompts.json      the given masks as ``propagate --prompts`` entries (the app's tracking, headless)
    DIR/exports/FORMAT/   exports

Every file is written under a temporary name and renamed (``io.files``), so killing the
server at any moment leaves each file either as it was or as it became; the temporaries a
killed server left are deleted when the project opens again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pdmtrack.errors import InputError
from pdmtrack.io.files import atomic_write_text, read_json, remove_stale_temporaries
from pdmtrack.io.masks import DAVIS_PALETTE
from pdmtrack.io.video import FrameReader
from pdmtrack.io.writers import write_palette_png

FORMAT = 1
PROJECT_FILE = "project.json"


def default_colour(object_id: int) -> str:
    """The DAVIS palette's colour of ``object_id`` as #rrggbb."""
    return "#" + bytes(DAVIS_PALETTE[object_id]).hex()


@dataclass
class ObjectInfo:
    """What the page shows of an object: its class name (the features' prompt) and colour."""

    name: str = ""
    colour: str = ""


@dataclass
class FrameAnnotation:
    """A given frame: a whole mask (``whole``) or the masks of some objects, and their clicks."""

    whole: bool
    clicks: dict[int, dict] = field(default_factory=dict)  # object id -> {"points", "labels", "box"}


class Project:
    """An annotation project folder (``create`` or ``open``); see the module docstring."""

    def __init__(self, folder: Path, meta: dict) -> None:
        self.folder = folder
        self.meta = meta

    @property
    def video(self) -> Path:
        return Path(self.meta["video"])

    @property
    def objects(self) -> dict[int, ObjectInfo]:
        return {int(i): ObjectInfo(**info) for i, info in self.meta["objects"].items()}

    @staticmethod
    def open_or_create(folder: str | Path, video: str | Path | None) -> tuple[Project, FrameReader]:
        """The project in ``folder`` (created for ``video`` when new) and its video's reader.
        InputError: no video for a new project, a project of another video, a damaged file."""
        folder = Path(folder)
        meta_file = folder / PROJECT_FILE
        if meta_file.exists():
            meta = read_json(meta_file)
            if not isinstance(meta, dict) or meta.get("format") != FORMAT or "video" not in meta:
                raise InputError(meta_file, "not a pdmtrack annotation project (or one of another version)")
            if video is not None and Path(video).resolve() != Path(meta["video"]):
                raise InputError(folder, f"is the project of another video ({meta['video']}); give that video, or another --project")
            reader = FrameReader(meta["video"])
            if (reader.num_frames, reader.width, reader.height) != (meta["frames"], meta["width"], meta["height"]):
                raise InputError(meta["video"], "is not the video this project was made on (frames or size changed)")
            for part in (folder, folder / "given", folder / "tracked"):  # what a killed server was writing
                remove_stale_temporaries(part)
            return Project(folder, meta), reader
        if video is None:
            raise InputError(folder, "holds no project: give the VIDEO to start one")
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise InputError(folder, "exists and is not an annotation project: choose an empty or new --project folder")
        reader = FrameReader(video)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "video": str(Path(video).resolve()), "frames": reader.num_frames, "width": reader.width,
                "height": reader.height, "fps": reader.fps, "objects": {}}  # fmt: skip
        project = Project(folder, meta)
        project.save_meta()
        return project, reader

    def save_meta(self) -> None:
        atomic_write_text(self.folder / PROJECT_FILE, json.dumps(self.meta, indent=1) + "\n")

    def set_objects(self, objects: dict[int, ObjectInfo]) -> None:
        self.meta["objects"] = {str(i): {"name": info.name, "colour": info.colour} for i, info in sorted(objects.items())}
        self.save_meta()

    # given frames -------------------------------------------------------------------------------
    def given_file(self, frame: int) -> Path:
        return self.folder / "given" / f"{frame:05d}.png"

    def read_annotations(self) -> tuple[dict[int, tuple[FrameAnnotation, np.ndarray]], dict[int, int]]:
        """Every given frame's annotation and label map, and the frames objects end at
        (InputError naming the file when one is damaged or missing)."""
        index = self.folder / "annotations.json"
        records = read_json(index) if index.exists() else {"frames": {}, "ends": {}}
        given = {}
        try:
            for frame, record in records["frames"].items():  # type: ignore[index]
                note = FrameAnnotation(bool(record["whole"]), {int(i): c for i, c in record["clicks"].items()})
                with Image.open(self.given_file(int(frame))) as image:
                    given[int(frame)] = (note, np.asarray(image).copy())
            ends = {int(i): int(frame) for i, frame in records.get("ends", {}).items()}  # type: ignore[union-attr]
        except FileNotFoundError as err:
            raise InputError(err.filename, "missing: annotations.json lists this given mask") from None
        except (KeyError, TypeError, ValueError, AttributeError, OSError) as err:
            raise InputError(index, f"damaged ({type(err).__name__}: {err}); restore it or start a new --project") from None
        return given, ends

    def save_annotations(self, frames: dict[int, tuple[FrameAnnotation, np.ndarray]], changed: int | None, ends: dict[int, int]) -> None:
        """Save frame ``changed``'s label map (or drop it), the annotation index with the frames
        objects end at, then the prompts file that reproduces them headless."""
        if changed is not None and changed in frames:
            self.given_file(changed).parent.mkdir(exist_ok=True)
            write_palette_png(self.given_file(changed), frames[changed][1])
        records = {str(frame): {"whole": note.whole, "clicks": {str(i): c for i, c in note.clicks.items()}}
                   for frame, (note, _) in sorted(frames.items())}  # fmt: skip
        index = {"frames": records, "ends": {str(i): frame for i, frame in sorted(ends.items())}}
        atomic_write_text(self.folder / "annotations.json", json.dumps(index) + "\n")
        self._save_prompts(frames, ends)
        if changed is not None and changed not in frames:
            self.given_file(changed).unlink(missing_ok=True)

    def _save_prompts(self, frames: dict[int, tuple[FrameAnnotation, np.ndarray]], ends: dict[int, int]) -> None:
        """prompts.json: per given frame its whole mask (then each named object in it, to carry
        its class name), or each given object's pixels of it; then each object's end."""
        names = {i: info.name for i, info in self.objects.items() if info.name}
        entries: list[dict] = []
        for frame, (note, labels) in sorted(frames.items()):
            mask = self.given_file(frame).relative_to(self.folder).as_posix()
            present = [int(i) for i in np.unique(labels) if i]
            objects = sorted(note.clicks) if not note.whole else [i for i in present if i in names]
            entries += [{"frame": frame, "mask": mask}] if note.whole else []
            entries += [{"frame": frame, "obj_id": i, "mask": mask, **({"cls": names[i]} if i in names else {})} for i in objects]
        entries += [{"obj_id": obj_id, "end": frame} for obj_id, frame in sorted(ends.items())]
        atomic_write_text(self.folder / "prompts.json", json.dumps(entries, indent=1) + "\n")

    # tracked frames ------------------------------------------------------------------------------
    def tracked_file(self, name: str) -> Path:
        return self.folder / "tracked" / f"{name}.png"

    def read_status(self) -> dict:
        """tracking.json: the stale frames and the last job (InputError when it is damaged)."""
        status = self.folder / "tracking.json"
        record = read_json(status) if status.exists() else {"stale": [], "job": None}
        if not isinstance(record, dict) or not isinstance(record.get("stale"), list) or not isinstance(record.get("job"), dict | None):
            raise InputError(status, "damaged; delete it to start the tracking state afresh (the tracked PNGs stay)")
        return record

    def save_status(self, status: dict) -> None:
        atomic_write_text(self.folder / "tracking.json", json.dumps(status) + "\n")
