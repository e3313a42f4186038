"""FrameReader: both backends on a real-frame mp4, frame folders, batching, bad input."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pdmtrack.errors import InputError
from pdmtrack.io.video import FOLDER_FPS, FrameReader
from pdmtrack.io.writers import write_video

NUM_FRAMES = 12
BACKENDS = ["pyav"] + (["decord"] if importlib.util.find_spec("decord") else [])


def _frames_of(folder: Path, count: int) -> list[np.ndarray]:
    files = sorted(folder.glob("*.jpg"))[:count]
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


@pytest.fixture(scope="module")
def source_frames(davis_mini: Path) -> list[np.ndarray]:
    return _frames_of(davis_mini / "JPEGImages" / "480p" / "blackswan", NUM_FRAMES)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, source_frames: list[np.ndarray]) -> Path:
    """An mp4 (H.264, yuv420p, 24 fps) encoded from 12 real DAVIS frames."""
    path = tmp_path_factory.mktemp("clip") / "blackswan.mp4"
    write_video(path, source_frames, fps=24)
    return path


def _all_frames(reader: FrameReader, batch_size: int = 5) -> np.ndarray:
    return np.concatenate([batch for _, batch in reader.batches(batch_size)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_reads_the_real_frames_in_order(clip: Path, source_frames: list[np.ndarray], backend: str) -> None:
    reader = FrameReader(clip, backend=backend)
    assert reader.backend == backend
    assert (reader.num_frames, len(reader), reader.fps) == (NUM_FRAMES, NUM_FRAMES, 24.0)
    assert (reader.height, reader.width) == source_frames[0].shape[:2]
    assert reader.frame_names == [f"{i:05d}" for i in range(NUM_FRAMES)]
    frames = _all_frames(reader)
    assert frames.shape == (NUM_FRAMES, 480, 854, 3) and frames.dtype == np.uint8
    # Lossy, but each decoded frame is closest to its own source frame.
    sources = np.stack(source_frames).astype(np.float32)
    for index, frame in enumerate(frames):
        errors = np.abs(sources - frame.astype(np.float32)).mean(axis=(1, 2, 3))
        assert errors.argmin() == index and errors[index] < 4.0


@pytest.mark.skipif(len(BACKENDS) < 2, reason="decord is not installed")
def test_backends_return_identical_frames(clip: Path, tmp_path: Path, source_frames: list[np.ndarray]) -> None:
    decord_frames = _all_frames(FrameReader(clip, backend="decord"))
    pyav_frames = _all_frames(FrameReader(clip, backend="pyav"))
    assert np.array_equal(decord_frames, pyav_frames)
    # A container without a frame count (webm/VP9) and a rotated phone-style video too.
    webm = tmp_path / "clip.webm"
    _encode(webm, source_frames[:4], codec="libvpx-vp9")
    rotated = tmp_path / "rotated.mp4"
    _encode(rotated, source_frames[:4], rotation=90)
    for path in (webm, rotated):
        decoded = {b: _all_frames(FrameReader(path, backend=b)) for b in BACKENDS}
        assert decoded["pyav"].shape[0] == 4
        assert np.array_equal(decoded["decord"], decoded["pyav"])
    assert FrameReader(rotated, backend="pyav").width == 480  # display rotation applied


def _encode(path: Path, frames: list[np.ndarray], codec: str = "libx264", rotation: int = 0, key_frame_every: int = 250) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.gop_size = key_frame_every
        if rotation:
            stream.set_display_rotation(rotation)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_auto_backend_prefers_decord(clip: Path) -> None:
    assert FrameReader(clip).backend == BACKENDS[-1]


def test_auto_falls_back_to_pyav_when_decord_cannot(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "decord", None)  # as on a platform without decord wheels
    assert FrameReader(clip).backend == "pyav"
    with pytest.raises(InputError, match=r"blackswan\.mp4: decord cannot read.*--backend pyav"):
        FrameReader(clip, backend="decord")


@pytest.mark.skipif(len(BACKENDS) < 2, reason="decord is not installed")
def test_auto_falls_back_when_decord_fails_to_open(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import decord

    def refuse(*args: object, **kwargs: object) -> None:
        raise decord.DECORDError("cannot find video stream")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    reader = FrameReader(clip)
    assert reader.backend == "pyav" and len(list(reader.batches(8))) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_and_ranges_match_sequential_decoding(tmp_path: Path, source_frames: list[np.ndarray], backend: str) -> None:
    clip = tmp_path / "short_gop.mkv"  # a key frame every 4 frames: reads seek, then decode forward
    _encode(clip, source_frames, key_frame_every=4)
    reader = FrameReader(clip, backend=backend)
    assert reader.num_frames == NUM_FRAMES
    frames = _all_frames(reader)
    for index in (0, 6, 8, NUM_FRAMES - 1):
        assert np.array_equal(reader.read(index), frames[index])
    got = list(reader.batches(3, start=5, end=11))
    assert [indices for indices, _ in got] == [[5, 6, 7], [8, 9, 10]]
    assert np.array_equal(np.concatenate([b for _, b in got]), frames[5:11])
    assert np.array_equal(np.stack(list(reader)), frames)


def test_frame_folder(davis_mini: Path) -> None:
    folder = davis_mini / "JPEGImages" / "480p" / "car-shadow"
    files = sorted(folder.glob("*.jpg"))
    with FrameReader(folder) as reader:
        assert (reader.backend, reader.num_frames, reader.fps) == ("folder", len(files), FOLDER_FPS)
        assert reader.frame_names == [f.stem for f in files]
        assert (reader.width, reader.height) == Image.open(files[0]).size
        expected = np.asarray(Image.open(files[3]).convert("RGB"))
        assert np.array_equal(reader.read(3), expected)
        indices, batch = next(iter(reader.batches(4, start=2)))
        assert indices == [2, 3, 4, 5] and np.array_equal(batch[1], expected)


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pdmtrack-decode"]


def test_consumer_stopping_early_stops_the_thread(clip: Path) -> None:
    reader = FrameReader(clip, backend="pyav")
    for indices, _ in reader.batches(1, prefetch=1):
        assert _decode_threads()
        if indices[0] == 1:
            break
    assert not _decode_threads()


def test_errors_in_the_decode_thread_reach_the_consumer(tmp_path: Path, source_frames: list[np.ndarray]) -> None:
    for index, frame in enumerate(source_frames[:4]):
        Image.fromarray(frame).save(tmp_path / f"{index:05d}.jpg")
    broken = tmp_path / "00002.jpg"
    broken.write_bytes(broken.read_bytes()[:2000])  # header intact, image data truncated
    reader = FrameReader(tmp_path)
    with pytest.raises(InputError, match="00002.jpg"):
        for _ in reader.batches(1):
            pass
    assert not _decode_threads()


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_video_whose_header_lies(tmp_path: Path, source_frames: list[np.ndarray], backend: str) -> None:
    """Index up front (faststart) but data cut: the count is what is really there, and
    decoding names the frame where the video breaks."""
    complete = tmp_path / "complete.mp4"
    with av.open(str(complete), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 854, 480, "yuv420p"
        stream.options = {"threads": "1"}  # the same bytes, so the same cut, on every run
        for frame in source_frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(complete.read_bytes()[: complete.stat().st_size * 6 // 10])
    with av.open(str(truncated)) as container:
        assert container.streams.video[0].frames == NUM_FRAMES  # what the header claims
    reader = FrameReader(truncated, backend=backend)
    assert 0 < reader.num_frames < NUM_FRAMES
    with pytest.raises(InputError, match=r"cut\.mp4: .*frame \d+.*truncated"):
        for _ in reader.batches(2):
            pass


def _assert_input_error(path: Path, backend: str = "auto", match: str | None = None) -> None:
    with pytest.raises(InputError) as caught:
        FrameReader(path, backend=backend)
    assert path.name in str(caught.value)
    if match:
        assert match in str(caught.value)


def test_bad_inputs_name_the_file(tmp_path: Path, clip: Path, source_frames: list[np.ndarray]) -> None:
    _assert_input_error(tmp_path / "missing.mp4", match="no such file")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    _assert_input_error(notes, match="not a video")
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video at all")
    _assert_input_error(fake, match="corrupt")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    _assert_input_error(truncated, match="truncated")
    _assert_input_error(truncated, backend="pyav", match="truncated")
    empty_video = tmp_path / "empty.mp4"
    with av.open(str(empty_video), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    _assert_input_error(empty_video, match="no frames")
    empty_folder = tmp_path / "frames"
    empty_folder.mkdir()
    _assert_input_error(empty_folder, match="no frames")
    Image.fromarray(source_frames[0]).save(empty_folder / "00000.jpg")
    Image.fromarray(source_frames[1][:240]).save(empty_folder / "00001.jpg")
    with pytest.raises(InputError, match=r"00001.jpg.*854x240.*854x480"):
        FrameReader(empty_folder)
    with pytest.raises(InputError, match="unknown backend"):
        FrameReader(clip, backend="opencv")


def _ffv1(path: Path, width: int, height: int, pix_fmt: str, count: int = 3) -> list[np.ndarray]:
    """An FFV1 .mkv of smooth colour gradients; returns the frames as PyAV (the reference) decodes them."""
    rows, cols = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for index in range(count):
            rgb = np.stack([np.sin(cols / 7 + index) * 100 + 128, np.cos(rows / 5) * 100 + 128, (cols + rows) % 200], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.mark.parametrize(("width", "height", "pix_fmt"), [(853, 479, "yuv420p"), (854, 480, "yuv420p10le"), (854, 480, "yuv440p")])
def test_auto_backend_decodes_like_pyav(tmp_path: Path, width: int, height: int, pix_fmt: str) -> None:
    """decord converts these (8-bit odd-height yuv420p, 10-bit, yuv440p) differently: auto must not use it."""
    path = tmp_path / f"{pix_fmt}.mkv"
    reference = _ffv1(path, width, height, pix_fmt)
    reader = FrameReader(path)
    assert (reader.width, reader.height) == (width, height)
    assert np.array_equal(_all_frames(reader), np.stack(reference))


@pytest.mark.skipif(len(BACKENDS) < 2, reason="decord is not installed")
def test_auto_backend_keeps_decord_where_it_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "even.mkv"
    reference = _ffv1(path, 853, 480, "yuv420p")
    reader = FrameReader(path)
    assert reader.backend == "decord" and np.array_equal(_all_frames(reader), np.stack(reference))
