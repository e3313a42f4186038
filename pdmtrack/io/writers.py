"""Output writers: DAVIS palette PNGs, an overlay mp4, a COCO RLE JSON and plain videos.

Every file is written to a temporary name beside its target and renamed when complete
(``pdmtrack.io.files``), so a failed or killed run never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image

from pdmtrack.errors import InputError
from pdmtrack.io.files import atomic_path, check_output_folder
from pdmtrack.io.masks import DAVIS_PALETTE, encode_rle


def _check_labels(labels: np.ndarray) -> None:
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be an (H, W) uint8 array, got {labels.dtype} {labels.shape}")


def write_palette_png(path: str | Path, labels: np.ndarray) -> None:
    """Write an (H, W) uint8 label map as an indexed (mode P) PNG with the DAVIS palette."""
    _check_labels(labels)
    image = Image.fromarray(labels, mode="P")
    image.putpalette(DAVIS_PALETTE.tobytes())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _output_folder(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (and parents) after :func:`check_output_folder`."""
    out_dir = check_output_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


class MaskPngWriter:
    """One DAVIS palette PNG per frame: ``out_dir/<name>.png``."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = _output_folder(out_dir)

    def write(self, name: str, labels: np.ndarray) -> Path:
        """Write frame ``name``'s label map; returns the file written."""
        target = self.out_dir / f"{name}.png"
        write_palette_png(target, labels)
        return target


# 60000 ticks per second: exact for 24, 25, 30, 50, 60 and 30000/1001 fps, and within
# MPEG-4 part 2's limit of 65535 (the fallback codec).
TIME_BASE = Fraction(1, 60000)


# One encoder thread: x264's automatic count follows the CPUs a process may use, and a
# multi-threaded encode once gave other bytes under load (CI, 2 cores busy); one thread has no
# scheduling to depend on. Measured at 864x480 on 2 cores: 24.3 ms a frame (blend included),
# 25.6 ms with 4 threads.
ENCODER_THREADS = 1


class VideoWriter:
    """Encode RGB frames to a video with PyAV (H.264 when libx264 is there, else MPEG-4 part 2).

    Each frame keeps the presentation time it is given (a variable frame rate survives);
    frames without one follow at ``fps``. Odd sizes are padded by one edge row/column
    (yuv420p needs even sizes). The file is written under a temporary name and renamed on a
    clean close; after an exception inside the ``with`` block no file appears under ``path``.
    """

    def __init__(self, path: str | Path, fps: float, width: int, height: int) -> None:
        self.path = Path(path)
        self.fps = fps
        self.width, self.height = width, height
        self._stack = contextlib.ExitStack()
        self._last_pts: int | None = None

    def __enter__(self) -> VideoWriter:
        import av

        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise InputError(self.path.parent, "output folder is an existing file")
        self._av = av
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._container = av.open(str(tmp), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        rate = Fraction(self.fps).limit_denominator(1001)
        self._stream = self._container.add_stream(codec, rate=rate)
        self._stream.width = self.width + self.width % 2
        self._stream.height = self.height + self.height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.time_base = TIME_BASE
        if codec == "libx264":
            self._stream.options = {"preset": "veryfast", "crf": "18", "threads": str(ENCODER_THREADS)}
        return self

    def write(self, frame_rgb: np.ndarray, time: float | None = None) -> None:
        """Append one (H, W, 3) uint8 RGB frame shown at ``time`` seconds (default: the
        previous frame's time + 1/fps)."""
        if frame_rgb.shape != (self.height, self.width, 3):
            raise ValueError(f"frame is {frame_rgb.shape}, writer expects {(self.height, self.width, 3)}")
        padded = np.pad(frame_rgb, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24")
        last = self._last_pts
        after_last = 0 if last is None else last + round(1 / (self.fps * TIME_BASE))
        pts = after_last if time is None else round(time / TIME_BASE)
        frame.pts = self._last_pts = pts if last is None else max(pts, last + 1)  # strictly increasing
        frame.time_base = TIME_BASE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._abandon(exc_type, exc, tb)
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except BaseException as err:
            self._abandon(type(err), err, err.__traceback__)
            raise
        self._stack.__exit__(None, None, None)

    def _abandon(self, exc_type: type[BaseException], exc: BaseException | None, tb: TracebackType | None) -> None:
        """Close the container quietly and delete the temporary file."""
        with contextlib.suppress(Exception):
            self._container.close()
        self._stack.__exit__(exc_type, exc, tb)


class OverlayWriter:
    """An mp4 of the frames with each object's mask blended in its DAVIS palette colour."""

    def __init__(self, path: str | Path, fps: float, width: int, height: int, alpha: float = 0.5) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError("alpha must lie in [0, 1]")
        self.alpha = alpha
        self._video = VideoWriter(path, fps, width, height)

    def __enter__(self) -> OverlayWriter:
        self._video.__enter__()
        return self

    def write(self, frame_rgb: np.ndarray, labels: np.ndarray, time: float | None = None) -> None:
        """Blend ``labels`` (H, W) over ``frame_rgb`` (H, W, 3) and append the result, shown at
        ``time`` seconds (see :meth:`VideoWriter.write`)."""
        self._video.write(blend_labels(frame_rgb, labels, self.alpha), time)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._video.__exit__(exc_type, exc, tb)


def blend_labels(frame_rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Frame with every object pixel mixed ``alpha`` of the way toward its palette colour."""
    _check_labels(labels)
    if labels.shape != frame_rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match the frame {frame_rgb.shape[:2]}")
    colours = DAVIS_PALETTE[labels].astype(np.float32)
    blended = frame_rgb.astype(np.float32) * (1.0 - alpha) + colours * alpha
    return np.where((labels > 0)[..., None], np.rint(blended), frame_rgb).astype(np.uint8)


class RleJsonWriter:
    """``masks.json``: COCO RLE per frame per object, streamed to disk (memory flat in length).

    Layout: ``{"height", "width", "object_ids", "frames": [{"name", "objects": {"<id>": rle}}]}``;
    objects absent from a frame are omitted. Written atomically on a clean close.
    """

    def __init__(self, path: str | Path, height: int, width: int, object_ids: list[int]) -> None:
        self.path = Path(path)
        self.height, self.width = height, width
        self.object_ids = [int(i) for i in object_ids]
        self._stack = contextlib.ExitStack()
        self._frames_written = 0

    def __enter__(self) -> RleJsonWriter:
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise InputError(self.path.parent, "output folder is an existing file")
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._file = self._stack.enter_context(tmp.open("w", encoding="utf-8"))
        header = json.dumps({"height": self.height, "width": self.width, "object_ids": self.object_ids})
        self._file.write(header[:-1] + ', "frames": [')
        return self

    def add(self, name: str, labels: np.ndarray) -> None:
        """Append frame ``name``: one RLE per object id present in ``labels``."""
        _check_labels(labels)
        if labels.shape != (self.height, self.width):
            raise ValueError(f"labels {labels.shape} do not match {(self.height, self.width)}")
        present = np.intersect1d(np.unique(labels), self.object_ids)
        objects = {str(int(object_id)): encode_rle(labels == object_id) for object_id in present}
        separator = ",\n" if self._frames_written else "\n"
        self._file.write(separator + json.dumps({"name": name, "objects": objects}))
        self._frames_written += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self._file.write("\n]}\n")
        self._stack.__exit__(exc_type, exc, tb)


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float) -> None:
    """Encode (H, W, 3) uint8 RGB frames to a video file with PyAV, atomically."""
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    with VideoWriter(path, fps, width=first.shape[1], height=first.shape[0]) as writer:
        for frame in itertools.chain([first], iterator):
            writer.write(frame)
