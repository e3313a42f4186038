"""The run record of an output folder (``run.json``): one folder, one run's outputs.

A run writes ``run.json`` before its first output (``finished`` null) and completes it at
the end (finish time, frames written), so even a killed run's folder says what is in it.
The record holds what shapes the outputs: the video, the frame range and direction, the
given masks (a sha256 of their pixels), the class names, which outputs are written, every
tracking setting but the runtime ones, and the list of files the run writes; and what a
reader of the outputs needs (``pdmtrack export``): the frame names, the frame size, the frame
rate and the objects (id -> class name or null; records written before these fields lack them).

A later run into the same folder is checked against it (:func:`check_reuse`): the same
run again (a rerun, or a restart after a kill) goes ahead and rewrites the same files;
another run is refused unless ``overwrite``, which first deletes every file the previous
record lists (:func:`replace_previous`), so a folder never mixes two runs' outputs. A folder
without a record that already holds files this run would write is refused the same way.

Image runs (``segment``, ``retrieve``, ``segment-ov``) keep no record: each writes its
folder whole (:func:`whole_folder`), listing its files in ``OUTPUTS_LIST``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.io.files import LOCK_FILE, atomic_write_text, is_safe_component, is_temporary, read_json, staged_folder
from pdmtrack.io.reports import json_ready, write_json

RUN_RECORD = "run.json"
OUTPUTS_LIST = ".pdmtrack-outputs"  # in an image run's folder: the names of the files it wrote, one a line
FORMAT = 1
_OVERRIDE = "pass --overwrite to replace them, or choose another -o"


def describe(
    *,
    video: Path,
    start: int,
    end: int,
    direction: str,
    masks: Mapping[int, np.ndarray] | None,
    classes: Sequence[str] | Mapping[int, str],
    outputs: dict[str, bool],
    files: list[str],
    settings: TrackSettings | None,
    frame_names: list[str],
    size: tuple[int, int],
    fps: float,
    objects: Mapping[int, str | None] | None,
    prompts: list[dict] | None = None,
) -> dict:
    """The record's identity part: everything that shapes the outputs (JSON-ready). ``size``
    is (height, width); ``objects``: object id -> its class name (None: none), or None when
    not known yet (matches any). Clicks and boxes (``prompts``) are recorded when there are any."""
    shaping = None if settings is None else shaping_settings(settings)
    record = {
        "format": FORMAT,
        "video": str(Path(video).resolve()),
        "frames": [start, end],
        "direction": direction,
        "masks": None if masks is None else {str(frame): labels_digest(labels) for frame, labels in sorted(masks.items())},
        "classes": {str(i): name for i, name in classes.items()} if isinstance(classes, Mapping) else list(classes),
        "outputs": dict(outputs),
        "settings": shaping,
        "files": list(files),
        "frame_names": list(frame_names),
        "size": list(size),
        "fps": fps,
        "objects": None if objects is None else {str(i): name for i, name in sorted(objects.items())},
    }
    if prompts:
        record["prompts"] = prompts
    return json.loads(json.dumps(json_ready(record)))


def shaping_settings(settings: TrackSettings) -> dict:
    """The settings that shape results: all but the runtime ones (device, cache, batch size)."""
    return {k: v for k, v in settings.to_dict().items() if k != "runtime"}


def check_reuse(out_dir: Path, record: dict, overwrite: bool) -> None:
    """InputError when ``out_dir`` holds another run's outputs (and ``overwrite`` is off).

    A field that is None in ``record`` (settings or masks not known yet) matches anything."""
    previous = _read(out_dir)
    if previous is None:
        clashing = [name for name in record["files"] if (out_dir / name).exists()]
        if clashing and not overwrite:
            problem = (
                f"holds {len(clashing)} file(s) this run would write ({', '.join(clashing[:3])}"
                f"{', ...' if len(clashing) > 3 else ''}) but no {RUN_RECORD} saying which run wrote them; {_OVERRIDE}"
            )
            raise InputError(out_dir, problem)
        return
    differing = _differences(previous, record)
    if differing and not overwrite:
        problem = (
            f"holds the outputs of another run (its {RUN_RECORD} differs in: {', '.join(differing)}); "
            f"a folder keeps one run's outputs: {_OVERRIDE}"
        )
        raise InputError(out_dir, problem)


def replace_previous(out_dir: Path, record: dict) -> int:
    """Delete the files of the previous run that ``record`` does not write again (all of
    them when it differs); returns how many were deleted."""
    previous = _read(out_dir)
    if previous is None or not _differences(previous, record):
        return 0
    removed = 0
    for name in previous.get("files", []):
        if is_safe_component(name):
            with contextlib.suppress(FileNotFoundError):
                (out_dir / name).unlink()
                removed += 1
    return removed


def check_replaceable(out_dir: Path, listing: str = RUN_RECORD) -> None:
    """InputError when ``out_dir`` holds anything no pdmtrack run put there: a run that is
    renamed into place replaces the whole folder, and the user's files must not go with it.
    Ours are the file ``listing`` (a video run's record, or an image run's ``OUTPUTS_LIST``),
    the files it lists, the run lock and pdmtrack's temporaries. A missing folder passes."""
    if not out_dir.is_dir():
        return
    ours = {listing, LOCK_FILE, *_listed_files(out_dir, listing)}
    foreign = sorted(entry.name for entry in out_dir.iterdir() if entry.name not in ours and not is_temporary(entry.name))
    if foreign:
        listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise InputError(
            out_dir,
            f"holds {listed}, which no pdmtrack run of this kind wrote; a finished run replaces this whole folder: "
            "move them elsewhere or choose another output folder",
        )


def _listed_files(out_dir: Path, listing: str) -> list[str]:
    """The files a previous run in ``out_dir`` wrote, as its ``listing`` file names them."""
    if listing == RUN_RECORD:
        return list((_read(out_dir) or {}).get("files", []))
    path = out_dir / listing
    try:
        return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot be read ({err}); remove it (and the outputs beside it) or choose another -o") from None


@contextlib.contextmanager
def whole_folder(out_dir: Path) -> Iterator[Path]:
    """A temporary folder for an image run's outputs (``segment``, ``retrieve``,
    ``segment-ov``) that replaces ``out_dir`` once the run completes, listing its files in
    ``OUTPUTS_LIST``: ``out_dir`` holds one run's outputs, and a failed run leaves it as it
    was. A folder holding files no image run wrote is refused before the rename
    (:func:`check_replaceable`; callers check it before their models load too)."""
    with staged_folder(out_dir) as staging:
        yield staging
        atomic_write_text(staging / OUTPUTS_LIST, "".join(f"{path.name}\n" for path in sorted(staging.iterdir())))
        check_replaceable(out_dir, OUTPUTS_LIST)  # the user may have put files there since the callers' check


def write_started(out_dir: Path, record: dict) -> None:
    """Write the record of a run that is starting (before any output)."""
    atomic_write_text(out_dir / RUN_RECORD, _text({**record, "started": _now(), "finished": None}))


def write_finished(out_dir: Path, record: dict, frames: int, seconds: float) -> None:
    """Complete the record once every output is written."""
    started = _read(out_dir) or {}
    done = {**record, "started": started.get("started"), "finished": _now(), "frames_written": frames,
            "seconds": round(seconds, 3)}  # fmt: skip
    atomic_write_text(out_dir / RUN_RECORD, _text(done))


def read_finished(out_dir: Path, needed: tuple[str, ...]) -> dict:
    """The record of the finished run in ``out_dir``, holding every field in ``needed``; an
    InputError naming what is missing otherwise (no record, an unfinished run, a record
    written before a needed field existed)."""
    path = out_dir / RUN_RECORD
    record = _read(out_dir)
    if record is None:
        raise InputError(path, f"missing: {out_dir} holds no run record, so it is no pdmtrack output folder")
    if record.get("finished") is None:
        raise InputError(path, "the run did not finish (a killed or running run): its outputs are incomplete; run it again")
    lacking = [key for key in needed if record.get(key) is None]
    if lacking:
        raise InputError(path, f"lacks {', '.join(lacking)} (an older pdmtrack wrote it): run the same propagate again to rewrite it")
    return record


def _differences(previous: dict, record: dict) -> list[str]:
    """The identity fields in which two records differ (a field None in either: not known)."""
    return [
        key
        for key, value in record.items()
        if key != "files" and value is not None and previous.get(key) is not None and previous.get(key) != value
    ]


def _read(out_dir: Path) -> dict | None:
    path = out_dir / RUN_RECORD
    if not path.exists():
        return None
    record = read_json(path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InputError(path, "not a pdmtrack run record; remove it (and the outputs beside it) or choose another -o")
    return record


def labels_digest(labels: np.ndarray) -> str:
    """sha256 of a label map (its shape, dtype and pixels): how the record names a given mask."""
    digest = hashlib.sha256(f"{labels.shape}{labels.dtype}".encode())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _text(record: dict) -> str:
    return json.dumps(record, indent=1, sort_keys=True) + "\n"


def same_settings_as_before(record: Path, settings: TrackSettings, extra: dict) -> None:
    """Resume only what was made the same way: the settings that shape results (all but the
    runtime ones) and ``extra`` are recorded in ``record`` on the first run; a later run with
    others is refused instead of mixing results of two configurations."""
    current = json.loads(json.dumps(json_ready({**shaping_settings(settings), **extra})))
    if record.is_file():
        previous = read_json(record)
        if not isinstance(previous, dict):
            raise InputError(record, "not a tracking-settings record (a JSON object); remove it or use a new -o")
        if previous != current:
            changed = sorted(key for key in current if previous.get(key) != current[key])
            problem = f"results here were tracked with other settings ({', '.join(changed)}); use a new -o or remove it"
            raise InputError(record.parent, problem)
        return
    write_json(record, current)
