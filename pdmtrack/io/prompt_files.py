"""Prompts as users write them: a prompts JSON file and the ``--point`` / ``--box`` one-liners.

The file is a list of entries ``{"frame", "obj_id", "points", "labels", "box", "cls"}``:
``points`` a list of [x, y] in the video's pixels, ``labels`` 1 (on the object) or 0 (not on
it) per point (default all 1), ``box`` [x0, y0, x1, y1] or null, ``cls`` the object's class
name (optional). An entry needs points, a box or both, or instead a ``mask``: a mask file
(relative to the prompts file) whose pixels equal to ``obj_id`` are that object's mask at the
frame, or, without ``obj_id``, the frame's whole mask (``pdmtrack annotate`` saves its edits
so). Entries apply in file order. One-liners: ``FRAME:OBJ:X,Y`` (add
``:neg`` for a negative click) and ``FRAME:OBJ:X0,Y0,X1,Y1``; the clicks and box of one frame
and object become one entry. Only the shape is checked here; whether the points lie in the
frame is the Tracker's check (``tracking.prompts``), made before any model loads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pdmtrack.errors import InputError, ParameterError
from pdmtrack.io.files import read_json

ENTRY_KEYS = ("frame", "obj_id", "points", "labels", "box", "cls", "mask", "end")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"
_POINT_SPEC = re.compile(rf"^(\d+):(\d+):({_NUMBER}),({_NUMBER})(?::(pos|neg))?$")
_BOX_SPEC = re.compile(rf"^(\d+):(\d+):({_NUMBER}),({_NUMBER}),({_NUMBER}),({_NUMBER})$")


@dataclass(frozen=True)
class Prompt:
    """One object's clicks and box at one frame, and where they were written (for errors)."""

    frame: int
    obj_id: int | None  # None: a whole-frame mask entry
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    cls: str | None = None
    source: str = ""
    mask: Path | None = None
    end: bool = False  # the object ends at ``frame`` (from it on)

    @property
    def gives_mask(self) -> bool:
        """Whether the entry gives a mask at its frame (clicks, a box or a mask file), not an end."""
        return not self.end

    def to_json(self) -> dict:
        """The entry as the prompts file writes it."""
        if self.end:
            return {"obj_id": self.obj_id, "end": self.frame}
        if self.mask is not None:
            entry: dict = {"frame": self.frame, "mask": str(self.mask)}
            return {**entry, **({"obj_id": self.obj_id} if self.obj_id is not None else {}), **({"cls": self.cls} if self.cls else {})}
        entry = {"frame": self.frame, "obj_id": self.obj_id, "points": [list(p) for p in self.points], "labels": list(self.labels)}
        return {**entry, "box": list(self.box) if self.box is not None else None, **({"cls": self.cls} if self.cls else {})}


def read_prompts(path: str | Path) -> list[Prompt]:
    """The entries of a prompts JSON file, in file order (InputError naming the file and entry)."""
    path = Path(path)
    entries = read_json(path, "no such prompts file")
    if not isinstance(entries, list):
        raise InputError(path, 'expected a JSON list of entries like {"frame": 0, "obj_id": 1, "points": [[412, 230]], "labels": [1]}')
    return [_entry(entry, f"{path} entry {index}", path.parent) for index, entry in enumerate(entries)]


def _entry(entry: object, where: str, folder: Path) -> Prompt:
    if not isinstance(entry, dict):
        raise InputError(where, "expected an object with frame, obj_id and points and/or box")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise InputError(where, f"unknown key '{unknown[0]}' (keys: {', '.join(ENTRY_KEYS)})")
    if "end" in entry:
        return _end_entry(entry, where)
    for key in ("frame", "obj_id"):
        if key == "obj_id" and "mask" in entry and "obj_id" not in entry:
            continue
        if not isinstance(entry.get(key), int) or isinstance(entry.get(key), bool) or entry[key] < 0:
            raise InputError(where, f"'{key}' must be a whole number >= 0, got {entry.get(key)!r}")
    if "mask" in entry:
        return _mask_entry(entry, where, folder)
    points = entry.get("points") or []
    if not isinstance(points, list) or not all(_is_pair(point) for point in points):
        raise InputError(where, "'points' must be a list of [x, y] pairs")
    labels = entry.get("labels")
    if labels is None:
        labels = [1] * len(points)
    if not isinstance(labels, list) or any(label not in (0, 1) or isinstance(label, bool) for label in labels):
        raise InputError(where, "'labels' must be a list of 1 (on the object) or 0 (not on it), one per point")
    box = entry.get("box")
    if box is not None and not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        raise InputError(where, "'box' must be [x0, y0, x1, y1] or null")
    cls = entry.get("cls")
    if cls is not None and (not isinstance(cls, str) or not cls.strip()):
        raise InputError(where, "'cls' must be a non-empty class name")
    return Prompt(
        entry["frame"], entry["obj_id"], tuple((float(x), float(y)) for x, y in points), tuple(labels),
        tuple(float(v) for v in box) if box is not None else None, cls.strip() if cls else None, where,
    )  # fmt: skip


def _end_entry(entry: dict, where: str) -> Prompt:
    if sorted(entry) != ["end", "obj_id"]:
        raise InputError(where, 'an end entry is {"obj_id": N, "end": FRAME} and nothing else')
    for key in ("obj_id", "end"):
        if not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] < 0:
            raise InputError(where, f"'{key}' must be a whole number >= 0, got {entry[key]!r}")
    return Prompt(entry["end"], entry["obj_id"], source=where, end=True)


def _mask_entry(entry: dict, where: str, folder: Path) -> Prompt:
    if not isinstance(entry["mask"], str) or not entry["mask"].strip():
        raise InputError(where, "'mask' must be the name of a mask file")
    clashing = sorted(set(entry) & {"points", "labels", "box"})
    if clashing:
        raise InputError(where, f"a mask entry takes no '{clashing[0]}' (give clicks in an entry of their own)")
    cls = entry.get("cls")
    if cls is not None and (not isinstance(cls, str) or not cls.strip() or "obj_id" not in entry):
        raise InputError(where, "'cls' must be a non-empty class name, in an entry with an obj_id")
    return Prompt(entry["frame"], entry.get("obj_id"), cls=cls.strip() if cls else None, source=where, mask=folder / entry["mask"])


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_pair(point: object) -> bool:
    return isinstance(point, list) and len(point) == 2 and all(_is_number(v) for v in point)


def prompts_from_flags(points: Sequence[str], boxes: Sequence[str]) -> list[Prompt]:
    """``--point FRAME:OBJ:X,Y[:neg]`` and ``--box FRAME:OBJ:X0,Y0,X1,Y1`` values -> one
    entry per (frame, object), in order of first mention, its clicks in the order given."""
    clicks: dict[tuple[int, int], list[tuple[tuple[float, float], int]]] = {}
    framed: dict[tuple[int, int], tuple[float, float, float, float]] = {}
    for spec in points:
        match = _POINT_SPEC.match(spec.strip())
        if not match:
            raise ParameterError("point", f"'{spec}' is not FRAME:OBJ:X,Y or FRAME:OBJ:X,Y:neg (e.g. 0:1:412,230)")
        clicks.setdefault((int(match[1]), int(match[2])), []).append(((float(match[3]), float(match[4])), int(match[5] != "neg")))
    for spec in boxes:
        match = _BOX_SPEC.match(spec.strip())
        if not match:
            raise ParameterError("box", f"'{spec}' is not FRAME:OBJ:X0,Y0,X1,Y1 (e.g. 0:2:10,20,200,240)")
        key = (int(match[1]), int(match[2]))
        if key in framed:
            raise ParameterError("box", f"two boxes for object {key[1]} at frame {key[0]}")
        framed[key] = (float(match[3]), float(match[4]), float(match[5]), float(match[6]))
    prompts = []
    for frame, obj_id in dict.fromkeys([*clicks, *framed]):
        given = clicks.get((frame, obj_id), [])
        flag = "--box" if (frame, obj_id) in framed else "--point"
        prompts.append(
            Prompt(frame, obj_id, tuple(p for p, _ in given), tuple(label for _, label in given), framed.get((frame, obj_id)), None,
                   f"{flag} {frame}:{obj_id}")
        )  # fmt: skip
    return prompts
