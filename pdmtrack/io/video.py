"""Streaming frame reader for video files (decord or PyAV) and folders of frames.

``FrameReader`` knows the frame count, fps and size up front and yields frames one at a
time or in batches decoded by a background thread; it never holds the whole video.
PyAV (FFmpeg 8, ``VideoFrame.to_ndarray``, display rotation by ``np.rot90``) is the
reference decoding. decord's bundled FFmpeg 4.1 converts YUV to RGB bit-identically only for
some pixel formats: it differs (by up to ~70 levels) for yuv420p with an odd height,
yuv410p, yuv440p and every >8-bit format. So ``auto`` uses decord only for the formats in
``DECORD_EXACT`` and only when its frame 0 equals PyAV's; otherwise PyAV.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image

from pdmtrack.errors import InputError, ParameterError
from pdmtrack.io.background import prefetched

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
BACKENDS = ("auto", "decord", "pyav")
FOLDER_FPS = 24.0  # a folder of frames carries no frame rate; outputs use this one
# Pixel formats decord converts to RGB exactly as PyAV does (measured on FFV1 at even and odd
# sizes); yuv420p only with an even height (an odd one places the chroma rows differently).
DECORD_EXACT = {"gray", "bgr0", "yuv411p", "yuv422p", "yuv444p", "yuv420p"}

FrameSource = Iterator[tuple[int, np.ndarray]]


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """An open image as (H, W, 3) uint8 RGB. 16-bit greyscale (modes I;16*, and I, which is how
    16-bit PNGs may open) keeps its high byte (value >> 8): PIL's own conversion clips every
    value above 255 to white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        grey = (np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def _natural_key(name: str) -> list[int | str]:
    """Sort key that orders ``frame2`` before ``frame10`` (same as plain sort when zero-padded)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class FrameReader:
    """Read RGB uint8 frames from a video file or a folder of JPEG/PNG frames.

    ``backend`` is ``auto`` (decord when it is installed, opens the file and decodes this
    pixel format exactly as PyAV does, else PyAV), ``decord`` or ``pyav``; folders need no backend (``self.backend == "folder"``).
    Frame folders have no frame rate: ``fps`` is ``FOLDER_FPS`` (24.0) for them.
    Every user mistake (missing path, not a video, corrupt or truncated file, no frames,
    frames of different sizes) raises ``InputError`` naming the file.
    """

    def __init__(self, path: str | Path, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ParameterError("backend", f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(self.path, "no such file or folder")
        if self.path.is_dir():
            self._open_folder()
        else:
            self._open_video(backend)

    # ------------------------------------------------------------------ opening
    def _open_folder(self) -> None:
        files = sorted(
            (p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
            key=lambda p: _natural_key(p.name),
        )
        if not files:
            raise InputError(self.path, f"folder holds no frames ({', '.join(sorted(IMAGE_SUFFIXES))})")
        stems = [p.stem for p in files]
        if len(set(stems)) != len(stems):
            duplicate = next(s for s in stems if stems.count(s) > 1)
            raise InputError(self.path, f"two frames share the name '{duplicate}' (different suffixes)")
        sizes = {}
        for file in files:
            try:
                with Image.open(file) as image:
                    sizes.setdefault(image.size, file)
            except OSError as err:
                raise InputError(file, f"cannot read this image ({err})") from err
        if len(sizes) > 1:
            (size_a, file_a), (size_b, file_b) = list(sizes.items())[:2]
            raise InputError(
                file_b,
                f"frame is {size_b[0]}x{size_b[1]} but {file_a.name} is {size_a[0]}x{size_a[1]} "
                "(all frames of a folder must have one size)",
            )
        self._files = files
        self.backend = "folder"
        self.num_frames = len(files)
        self.fps = FOLDER_FPS
        self.rotation = 0
        self._pts_sorted = None
        ((self.width, self.height),) = sizes
        self.frame_names = stems

    def _open_video(self, backend: str) -> None:
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise InputError(self.path, f"not a video (expected {', '.join(sorted(VIDEO_SUFFIXES))} or a folder of frames)")
        first = self._probe_pyav()
        self.frame_names = [f"{i:05d}" for i in range(self.num_frames)]
        self.backend = "pyav"
        if backend in ("auto", "decord"):
            problem, decord_first = self._check_decord()
            if problem is None and backend == "auto":
                problem = self._decord_inexact(first, decord_first)
            if problem is None:
                self.backend = "decord"
            elif backend == "decord":
                raise InputError(self.path, f"decord cannot read this video ({problem}); try --backend pyav")

    def _probe_pyav(self) -> np.ndarray:
        """Count frames by demuxing (headers can lie), read fps, size and rotation; frame 0."""
        import av

        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise InputError(self.path, "video has no frames (it holds no video stream)")
                stream = container.streams.video[0]
                timestamps = [
                    packet.pts if packet.pts is not None else packet.dts
                    for packet in container.demux(stream)
                    if packet.size > 0 and not packet.is_discard
                ]
                rate = stream.average_rate or stream.guessed_rate
                self._time_base = stream.time_base
        except av.FFmpegError as err:
            problem = f"cannot be opened as a video: corrupt, truncated or not a video ({err})"
            raise InputError(self.path, problem) from err
        if not timestamps:
            raise InputError(self.path, "video has no frames")
        self.num_frames = len(timestamps)
        self.fps = float(rate) if rate else FOLDER_FPS
        # A frame's presentation timestamp -> its index, for exact seeking; None when unusable.
        usable = None not in timestamps and len(set(timestamps)) == len(timestamps)
        self._pts_sorted = sorted(timestamps) if usable else None
        return self._probe_first_frame()

    def _probe_first_frame(self) -> np.ndarray:
        """Decode frame 0 with PyAV: proves the stream decodes; gives rotation, displayed size,
        pixel format and the frame itself (RGB, as displayed)."""
        import av

        try:
            with av.open(str(self.path)) as container:
                frame = next(container.decode(container.streams.video[0]), None)
        except av.FFmpegError as err:
            raise InputError(self.path, f"cannot decode frame 0: corrupt or truncated video ({err})") from err
        if frame is None:
            raise InputError(self.path, "cannot decode frame 0: corrupt or truncated video")
        self._rotation = round((frame.rotation or 0) / 90) % 4  # counter-clockwise quarter turns, as decord
        self.height, self.width = (frame.width, frame.height) if self._rotation % 2 else (frame.height, frame.width)
        self.rotation = self._rotation * 90  # display rotation in degrees; frames are read as displayed
        self.coded_size = (frame.width, frame.height)  # (width, height) as stored, before rotation
        self.pixel_format = frame.format.name
        return np.rot90(frame.to_ndarray(format="rgb24"), self._rotation)

    def _check_decord(self) -> tuple[str | None, np.ndarray | None]:
        """(why decord cannot serve this file or None when it can, decord's frame 0)."""
        try:
            import decord
        except ImportError:
            return "decord is not installed", None
        try:
            reader = decord.VideoReader(str(self.path), num_threads=1)
            first = reader[0].asnumpy()
            count = len(reader)
            del reader
        except Exception as err:  # decord raises its own DECORDError and RuntimeError subclasses
            return f"{type(err).__name__}: {err}", None
        if first.shape[:2] != (self.height, self.width):
            return f"decord sees {first.shape[1]}x{first.shape[0]} frames, not {self.width}x{self.height}", None
        if count < self.num_frames:
            return f"decord sees {count} frames of {self.num_frames}", None
        return None, first

    def _decord_inexact(self, first: np.ndarray, decord_first: np.ndarray | None) -> str | None:
        """Why decord would not give PyAV's pixels for this stream, or None when it would."""
        odd_chroma = self.pixel_format == "yuv420p" and self.coded_size[1] % 2
        if self.pixel_format not in DECORD_EXACT or odd_chroma:
            return f"decord converts {self.pixel_format} at {self.coded_size[0]}x{self.coded_size[1]} differently"
        if decord_first is None or not np.array_equal(first, decord_first):
            return "decord's frame 0 differs from PyAV's"
        return None

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self.num_frames

    def __enter__(self) -> FrameReader:
        """Each read opens and closes its own decoder, so there is nothing to release on exit."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield every frame as (H, W, 3) uint8 RGB, decoded in a background thread."""
        for _, batch in self.batches(1):
            yield batch[0]

    def frame_time(self, index: int) -> float:
        """Seconds from frame 0 to frame ``index``: the video's own timestamps (a variable
        frame rate is kept), or ``index / fps`` for folders and videos without usable ones."""
        if self._pts_sorted is None or self._time_base is None:
            return index / self.fps
        return float((self._pts_sorted[index] - self._pts_sorted[0]) * self._time_base)

    def read(self, index: int) -> np.ndarray:
        """Decode one frame (H, W, 3) uint8 RGB by index."""
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} out of range (video has {self.num_frames} frames)")
        source = self._frames(index, index + 1)
        try:
            return next(source)[1]
        finally:
            source.close()

    def batches(
        self, batch_size: int, start: int = 0, end: int | None = None, prefetch: int = 2, reverse: bool = False
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Yield (frame indices, (B, H, W, 3) uint8 array) for frames ``start..end-1``; with
        ``reverse`` from ``end-1`` down to ``start`` (indices and frames descending).

        A background thread decodes up to ``prefetch`` batches ahead (bounded, so memory is
        flat in the video length); its errors are re-raised here; it stops when the
        consumer stops early.
        """
        end = self.num_frames if end is None else end
        if batch_size < 1 or prefetch < 1:
            raise ValueError("batch_size and prefetch must be >= 1")
        if not 0 <= start <= end <= self.num_frames:
            raise ValueError(f"bad frame range [{start}, {end}) for a video of {self.num_frames} frames")
        if reverse:
            return prefetched(lambda: self._reverse_batched(batch_size, start, end), prefetch, "pdmtrack-decode")
        return prefetched(lambda: self._batched(batch_size, start, end), prefetch, "pdmtrack-decode")

    def _reverse_batched(self, batch_size: int, start: int, end: int) -> Iterator[tuple[list[int], np.ndarray]]:
        """Batches from the end backwards: each decoded forwards from its first frame, then flipped."""
        for batch_end in range(end, start, -batch_size):
            for indices, batch in self._batched(batch_size, max(start, batch_end - batch_size), batch_end):
                yield indices[::-1], batch[::-1].copy()

    def _batched(self, batch_size: int, start: int, end: int) -> Iterator[tuple[list[int], np.ndarray]]:
        """Group ``_frames`` into (indices, stacked array) batches."""
        source = self._frames(start, end)
        try:
            for batch_start in range(start, end, batch_size):
                indices = list(range(batch_start, min(batch_start + batch_size, end)))
                batch = np.empty((len(indices), self.height, self.width, 3), dtype=np.uint8)
                for slot in range(len(indices)):
                    batch[slot] = next(source)[1]
                yield indices, batch
        finally:
            source.close()

    def _frames(self, start: int, end: int) -> FrameSource:
        """Yield (index, frame) for ``start <= index < end`` in order, from the chosen backend."""
        if self.backend == "folder":
            return self._folder_frames(start, end)
        if self.backend == "decord":
            return self._decord_frames(start, end)
        return self._pyav_frames(start, end)

    def _folder_frames(self, start: int, end: int) -> FrameSource:
        for index in range(start, end):
            file = self._files[index]
            try:
                with Image.open(file) as image:
                    frame = rgb_pixels(image)
            except OSError as err:
                raise InputError(file, f"cannot read this image ({err})") from err
            if frame.shape[:2] != (self.height, self.width):
                raise InputError(file, f"frame changed size to {frame.shape[1]}x{frame.shape[0]}")
            yield index, frame

    def _decord_frames(self, start: int, end: int) -> FrameSource:
        """Seek once, then decode forward frame by frame (decord's lowest-memory path)."""
        import decord

        index = start
        try:
            reader = decord.VideoReader(str(self.path), num_threads=1)
            if start > 0:
                reader.seek_accurate(start)
            for index in range(start, end):
                yield index, reader.next().asnumpy()
        except Exception as err:  # decord raises DECORDError / RuntimeError / StopIteration subclasses
            raise InputError(self.path, f"cannot decode frame {index}: corrupt or truncated video ({err})") from err

    def _pyav_frames(self, start: int, end: int) -> FrameSource:
        import av

        index = -1
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                seek_to = self._pts_sorted[start] if start > 0 and self._pts_sorted is not None else None
                if seek_to is not None:
                    container.seek(seek_to, stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    index = self._frame_index(frame.pts) if seek_to is not None else index + 1
                    if index < start:
                        continue
                    if index >= end:
                        return
                    yield index, np.rot90(frame.to_ndarray(format="rgb24"), self._rotation)
        except av.FFmpegError as err:
            raise InputError(self.path, f"cannot decode frame {index + 1}: corrupt or truncated video ({err})") from err
        if index + 1 < end:
            raise InputError(self.path, f"decoding stopped at frame {index + 1} of {self.num_frames}: corrupt or truncated video")

    def _frame_index(self, pts: int | None) -> int:
        """Index of the frame with presentation timestamp ``pts`` (after a seek)."""
        position = bisect.bisect_left(self._pts_sorted, pts) if pts is not None else -1
        if position < 0 or position >= len(self._pts_sorted) or self._pts_sorted[position] != pts:
            raise InputError(self.path, f"decoded a frame with unknown timestamp {pts}: cannot seek in this video")
        return position
