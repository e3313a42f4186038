"""The page's frames: JPEG-encoded, the most recent few hundred kept, decoded in runs.

Seeking in a video file costs a decode from the last keyframe (tens to hundreds of
milliseconds at 480p); decoding forward costs about a millisecond a frame. So a frame that
is not kept is decoded together with the ``ahead`` frames after it, in one forward pass:
scrubbing forward and playing at the video's frame rate then find their frames ready.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from PIL import Image

from pdmtrack.io.video import FrameReader

JPEG_QUALITY = 90
KEPT_FRAMES = 256  # about 15 MB of 854x480 JPEGs
AHEAD = 24  # frames decoded with a frame that was not kept: a second of video at 24 fps


class FrameJpegs:
    """``get(frame)``: frame ``frame`` of ``reader`` as JPEG bytes (thread-safe)."""

    def __init__(self, reader: FrameReader, kept: int = KEPT_FRAMES, ahead: int = AHEAD) -> None:
        self.reader, self.kept, self.ahead = reader, kept, ahead
        self._jpegs: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.decoded_runs = 0  # forward passes over the video so far

    def get(self, frame: int) -> bytes:
        with self._lock:
            if frame not in self._jpegs:
                self._decode_run(frame)
            self._jpegs.move_to_end(frame)
            return self._jpegs[frame]

    def _decode_run(self, first: int) -> None:
        """Decode ``first`` and the frames after it (up to ``ahead``) in one forward pass."""
        self.decoded_runs += 1
        end = min(self.reader.num_frames, first + 1 + self.ahead)
        for indices, frames in self.reader.batches(8, first, end):
            for index, pixels in zip(indices, frames):
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
                self._jpegs[index] = buffer.getvalue()
                self._jpegs.move_to_end(index)
        while len(self._jpegs) > self.kept:
            self._jpegs.popitem(last=False)
