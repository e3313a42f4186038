"""``pdmtrack export``: a finished output folder's masks in another tool's format.

Reads the folder's ``run.json`` (frame names, size, frame rate, objects and their class names) and
its DAVIS palette PNGs, frame by frame, into one of the writers of ``pdmtrack.io.exports``;
``cutout`` also decodes the run's video. Everything is checked before anything is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pdmtrack.errors import InputError
from pdmtrack.io.exports import NO_CLASS, ExportInfo, check_format, check_target, default_target, open_export
from pdmtrack.io.video import FrameReader
from pdmtrack.runs.record import RUN_RECORD, read_finished

NEEDED = ("frame_names", "size", "fps", "objects")  # run.json fields an export reads


def export_info(
    video: str | Path,
    frame_names: Sequence[str],
    size: Sequence[int],
    fps: float,
    objects: Mapping[int, str | None] | Mapping[str, str | None],
) -> ExportInfo:
    """The ExportInfo of a run: its video, frame names, (height, width), frame rate, and each
    object's class name (``objects``: object id -> name, None for an object without one)."""
    classes = {int(object_id): NO_CLASS if name is None else name for object_id, name in objects.items()}
    height, width = size
    return ExportInfo(Path(video).stem, list(frame_names), int(height), int(width), float(fps), classes)


def export(run_folder: str | Path, format: str, target: str | Path | None = None, *, overwrite: bool = False, matte: bool = False) -> Path:
    """Write the masks of the finished run in ``run_folder`` as ``format`` (one of
    ``pdmtrack.io.exports.FORMATS``) to ``target`` (default: ``run_folder/exports/<name>``);
    returns the file or folder written. An existing target is replaced only with
    ``overwrite``; ``matte`` (cutout only) adds one grey mask video per object."""
    check_format("format", format, matte)
    run_folder = Path(run_folder)
    record = read_finished(run_folder, NEEDED)
    info = export_info(record["video"], record["frame_names"], record["size"], record["fps"], record["objects"])
    if not record.get("outputs", {}).get("png"):
        raise InputError(run_folder, "holds no mask PNGs (the run was made with --no-png), which an export reads")
    pngs = [run_folder / f"{name}.png" for name in info.frame_names]
    missing = [path for path in pngs if not path.is_file()]
    if missing:
        raise InputError(missing[0], f"missing: {len(missing)} of the {len(pngs)} mask PNGs {RUN_RECORD} lists are not there")
    target = check_target(default_target(run_folder, format) if target is None else target, format, overwrite)
    own = {run_folder.resolve(), *((run_folder / name).resolve() for name in [RUN_RECORD, *record.get("files", [])])}
    if target.resolve() in own:
        raise InputError(target, "is the run's own folder or one of its files; choose another -o")
    with open_export(format, target, info, matte) as writer, contextlib.ExitStack() as stack:
        frames = _frames(record, info) if writer.needs_frames else None
        if frames is not None:
            stack.callback(frames.close)  # an error stops the decode thread at once
        for position, path in enumerate(pngs):
            writer.write(position, _labels(path, info), None if frames is None else next(frames))
    return target


def _labels(path: Path, info: ExportInfo) -> np.ndarray:
    """The label map of one of the run's PNGs, checked."""
    try:
        with Image.open(path) as image:
            labels = np.asarray(image) if image.mode in ("P", "L") else None
    except OSError as err:
        raise InputError(path, f"cannot read the mask PNG ({err})") from err
    if labels is None or labels.shape != (info.height, info.width):
        raise InputError(path, f"not a {info.width}x{info.height} palette mask PNG as the run wrote it")
    return labels


def _frames(record: dict, info: ExportInfo) -> Generator[np.ndarray, None, None]:
    """The run's video frames, in order over its frame range."""
    video = Path(record["video"])
    if not video.exists():
        raise InputError(video, "missing: the run's video is not there (cutout needs its frames)")
    start, end = record["frames"]
    # PyAV: the frames auto gives (decord only where identical), and decord's native memory
    # grows while its consumer is slower than decoding (~3 MB a frame at 854x480)
    reader = FrameReader(video, backend="pyav")
    if (reader.height, reader.width) != (info.height, info.width):
        raise InputError(video, f"its frames are {reader.width}x{reader.height}, not {info.width}x{info.height} as when it was tracked")
    return (frame for _, batch in reader.batches(8, start, end) for frame in batch)
